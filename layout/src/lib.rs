//! The module import graph of a crate, read from its source, and the cycles in it.
//!
//! A crate is read from its root file (`lib.rs`, `main.rs`, `bin/x.rs`) by following its `mod`
//! declarations (`#[path]` included); test code (`#[cfg(test)]` items and modules) is left out.
//! Each module file is a node. An edge goes from a file to another when the first names
//! something of the second: in a `use` or in any path (`crate::a::b::f()`), written from the
//! crate root (`crate::`), relative (`super::`, `self::`, a child module's name) or through a
//! re-export (`pub use`), which is followed to the module that defines the name. Paths into other
//! crates and declarations (`mod x;`) are not edges.
//!
//! The suite's test (`layout/tests/import_cycles.rs`) asserts that no crate of the workspace has a
//! cycle: each file can then be read, tested and moved knowing only the files below it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// One module of a crate: a file, or an inline `mod x { .. }` within one.
pub struct Module {
    /// Path from the crate root (empty for the root).
    pub path: Vec<String>,
    /// The file that holds it.
    pub file: PathBuf,
    /// The file-backed module that holds it (itself, unless it is inline).
    pub home: usize,
    items: Vec<syn::Item>,
}

/// A crate's modules and the imports between their files.
pub struct Graph {
    pub modules: Vec<Module>,
    /// (from, to) file-backed modules → the names the first takes from the second.
    pub edges: BTreeMap<(usize, usize), BTreeSet<String>>,
    by_path: HashMap<Vec<String>, usize>,
    /// Per module: name re-exported with `pub use` → the absolute path it stands for.
    reexports: Vec<HashMap<String, Vec<String>>>,
}

impl Graph {
    /// Reads the crate whose root file is `root`.
    pub fn of_crate(root: &Path) -> Result<Self, String> {
        let mut graph =
            Self { modules: Vec::new(), edges: BTreeMap::new(), by_path: HashMap::new(), reexports: Vec::new() };
        let dir = root.parent().unwrap_or(Path::new(".")).to_path_buf();
        graph.load(Vec::new(), root.to_path_buf(), dir)?;
        graph.reexports = (0..graph.modules.len()).map(|m| graph.collect_reexports(m)).collect();
        for m in 0..graph.modules.len() {
            graph.collect_edges(m);
        }
        Ok(graph)
    }

    /// The files of the crate.
    pub fn files(&self) -> Vec<&Path> {
        self.modules.iter().enumerate().filter(|(i, m)| m.home == *i).map(|(_, m)| m.file.as_path()).collect()
    }

    /// Groups of files that import each other, directly or through others (strongly connected
    /// components of more than one file), each sorted; empty when the graph has no cycle.
    pub fn cycles(&self) -> Vec<Vec<usize>> {
        let n = self.modules.len();
        let mut next: Vec<Vec<usize>> = vec![Vec::new(); n];
        for &(from, to) in self.edges.keys() {
            next[from].push(to);
        }
        let mut tarjan = Tarjan {
            next: &next,
            index: vec![None; n],
            low: vec![0; n],
            stack: Vec::new(),
            on_stack: vec![false; n],
            counter: 0,
            out: Vec::new(),
        };
        for v in 0..n {
            if self.modules[v].home == v && tarjan.index[v].is_none() {
                tarjan.visit(v);
            }
        }
        let mut out: Vec<Vec<usize>> = tarjan.out.into_iter().filter(|c| c.len() > 1).collect();
        for c in &mut out {
            c.sort_unstable();
        }
        out.sort();
        out
    }

    /// A cycle in words: its files and, for each import between them, the names it takes.
    pub fn describe(&self, cycle: &[usize]) -> String {
        let mut s = format!("{} files import each other:", cycle.len());
        for (&(from, to), names) in &self.edges {
            if cycle.contains(&from) && cycle.contains(&to) {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                s.push_str(&format!("\n  {} -> {}: {}", self.name(from), self.name(to), names.join(", ")));
            }
        }
        s
    }

    /// `crate::a::b (path/to/b.rs)`.
    pub fn name(&self, m: usize) -> String {
        let module = &self.modules[m];
        let mut path = vec!["crate".to_owned()];
        path.extend(module.path.iter().cloned());
        format!("{} ({})", path.join("::"), module.file.display())
    }

    fn load(&mut self, path: Vec<String>, file: PathBuf, child_dir: PathBuf) -> Result<usize, String> {
        let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let ast = syn::parse_file(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        let index = self.modules.len();
        self.by_path.insert(path.clone(), index);
        self.modules.push(Module { path, file, home: index, items: ast.items });
        self.discover(index, &child_dir)?;
        Ok(index)
    }

    /// Loads the modules that `parent` declares; `dir` is where its `mod x;` files are.
    fn discover(&mut self, parent: usize, dir: &Path) -> Result<(), String> {
        let mods: Vec<syn::ItemMod> = self.modules[parent]
            .items
            .iter()
            .filter_map(|item| match item {
                syn::Item::Mod(m) if !is_test(&m.attrs) => Some(m.clone()),
                _ => None,
            })
            .collect();
        let file = self.modules[parent].file.clone();
        for m in mods {
            let name = m.ident.to_string();
            let mut path = self.modules[parent].path.clone();
            path.push(name.clone());
            match m.content {
                Some((_, items)) => {
                    let index = self.modules.len();
                    self.by_path.insert(path.clone(), index);
                    let home = self.modules[parent].home;
                    self.modules.push(Module { path, file: file.clone(), home, items });
                    self.discover(index, &dir.join(&name))?;
                }
                None => {
                    let (child, child_dir) = match path_attribute(&m.attrs) {
                        Some(p) => {
                            let child = file.parent().unwrap_or(Path::new(".")).join(p);
                            let dir = child.parent().unwrap_or(Path::new(".")).to_path_buf();
                            (child, dir)
                        }
                        None if dir.join(format!("{name}.rs")).exists() => {
                            (dir.join(format!("{name}.rs")), dir.join(&name))
                        }
                        None => (dir.join(&name).join("mod.rs"), dir.join(&name)),
                    };
                    self.load(path, child, child_dir)?;
                }
            }
        }
        Ok(())
    }

    fn collect_reexports(&self, m: usize) -> HashMap<String, Vec<String>> {
        let mut out = HashMap::new();
        for item in &self.modules[m].items {
            let syn::Item::Use(u) = item else { continue };
            if matches!(u.vis, syn::Visibility::Inherited) || is_test(&u.attrs) {
                continue;
            }
            for (segments, name) in flatten(&u.tree) {
                if let (Some(name), Some(abs)) = (name, self.absolute(m, &segments)) {
                    out.insert(name, abs);
                }
            }
        }
        out
    }

    fn collect_edges(&mut self, m: usize) {
        let mut paths = Paths::default();
        for item in &self.modules[m].items {
            match item {
                syn::Item::Mod(_) => {}
                item if item_attrs(item).is_some_and(is_test) => {}
                syn::Item::Use(u) => paths.found.extend(flatten(&u.tree).into_iter().map(|(segments, _)| segments)),
                item => paths.visit_item(item),
            }
        }
        let from = self.modules[m].home;
        for segments in paths.found {
            let Some(abs) = self.absolute(m, &segments) else { continue };
            if let Some((to, name)) = self.target(abs, 0)
                && to != from
            {
                self.edges.entry((from, to)).or_default().insert(name);
            }
        }
    }

    /// `segments` as written in module `m`, from the crate root; `None` if it leaves the crate
    /// or starts with a name that is not a module (a local item or import).
    fn absolute(&self, m: usize, segments: &[String]) -> Option<Vec<String>> {
        let here = &self.modules[m].path;
        let first = segments.first()?;
        match first.as_str() {
            "crate" => Some(segments[1..].to_vec()),
            "self" => Some(here.iter().chain(&segments[1..]).cloned().collect()),
            "super" => {
                let ups = segments.iter().take_while(|s| *s == "super").count();
                let base = here.get(..here.len().checked_sub(ups)?)?;
                Some(base.iter().chain(&segments[ups..]).cloned().collect())
            }
            _ => {
                let mut child = here.clone();
                child.push(first.clone());
                self.by_path.contains_key(&child).then(|| here.iter().chain(segments).cloned().collect())
            }
        }
    }

    /// The file-backed module that defines what `abs` names, and the name taken from it.
    fn target(&self, abs: Vec<String>, depth: usize) -> Option<(usize, String)> {
        let k = (0..=abs.len()).rev().find(|&k| self.by_path.contains_key(&abs[..k]))?;
        let module = self.by_path[&abs[..k]];
        let rest = &abs[k..];
        if let Some(first) = rest.first()
            && let Some(source) = self.reexports[module].get(first)
            && depth < 16
        {
            let followed: Vec<String> = source.iter().chain(&rest[1..]).cloned().collect();
            if followed != abs
                && let Some(found) = self.target(followed, depth + 1)
            {
                return Some(found);
            }
        }
        let name = rest.first().or(abs.last()).cloned().unwrap_or_else(|| "crate".to_owned());
        Some((self.modules[module].home, name))
    }
}

/// Every path of a `use` tree, with the name it binds (`None` for globs).
fn flatten(tree: &syn::UseTree) -> Vec<(Vec<String>, Option<String>)> {
    fn walk(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<(Vec<String>, Option<String>)>) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                walk(&p.tree, prefix, out);
                prefix.pop();
            }
            syn::UseTree::Name(n) if n.ident == "self" => {
                out.push((prefix.clone(), prefix.last().cloned()));
            }
            syn::UseTree::Name(n) => {
                let mut path = prefix.clone();
                path.push(n.ident.to_string());
                out.push((path, Some(n.ident.to_string())));
            }
            syn::UseTree::Rename(r) => {
                let mut path = prefix.clone();
                path.push(r.ident.to_string());
                out.push((path, Some(r.rename.to_string())));
            }
            syn::UseTree::Glob(_) => out.push((prefix.clone(), None)),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    walk(t, prefix, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(tree, &mut Vec::new(), &mut out);
    out
}

/// Every path written in an item, test code left out.
#[derive(Default)]
struct Paths {
    found: Vec<Vec<String>>,
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.leading_colon.is_none() && path.segments.len() > 1 {
            self.found.push(path.segments.iter().map(|s| s.ident.to_string()).collect());
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_item_mod(&mut self, _: &'ast syn::ItemMod) {
        // A module of its own.
    }

    fn visit_item(&mut self, item: &'ast syn::Item) {
        if !item_attrs(item).is_some_and(is_test) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if !is_test(&f.attrs) {
            syn::visit::visit_impl_item_fn(self, f);
        }
    }
}

struct Tarjan<'a> {
    next: &'a [Vec<usize>],
    index: Vec<Option<usize>>,
    low: Vec<usize>,
    stack: Vec<usize>,
    on_stack: Vec<bool>,
    counter: usize,
    out: Vec<Vec<usize>>,
}

impl Tarjan<'_> {
    fn visit(&mut self, v: usize) {
        self.index[v] = Some(self.counter);
        self.low[v] = self.counter;
        self.counter += 1;
        self.stack.push(v);
        self.on_stack[v] = true;
        for &w in &self.next[v] {
            match self.index[w] {
                None => {
                    self.visit(w);
                    self.low[v] = self.low[v].min(self.low[w]);
                }
                Some(iw) if self.on_stack[w] => self.low[v] = self.low[v].min(iw),
                Some(_) => {}
            }
        }
        if Some(self.low[v]) == self.index[v] {
            let mut component = Vec::new();
            while let Some(w) = self.stack.pop() {
                self.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            self.out.push(component);
        }
    }
}

fn item_attrs(item: &syn::Item) -> Option<&[syn::Attribute]> {
    Some(match item {
        syn::Item::Const(i) => &i.attrs,
        syn::Item::Enum(i) => &i.attrs,
        syn::Item::ExternCrate(i) => &i.attrs,
        syn::Item::Fn(i) => &i.attrs,
        syn::Item::ForeignMod(i) => &i.attrs,
        syn::Item::Impl(i) => &i.attrs,
        syn::Item::Macro(i) => &i.attrs,
        syn::Item::Mod(i) => &i.attrs,
        syn::Item::Static(i) => &i.attrs,
        syn::Item::Struct(i) => &i.attrs,
        syn::Item::Trait(i) => &i.attrs,
        syn::Item::TraitAlias(i) => &i.attrs,
        syn::Item::Type(i) => &i.attrs,
        syn::Item::Union(i) => &i.attrs,
        syn::Item::Use(i) => &i.attrs,
        _ => return None,
    })
}

/// `#[cfg(test)]`.
fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| a.path().is_ident("cfg") && a.parse_args::<syn::Ident>().is_ok_and(|i| i == "test"))
}

/// The file of `#[path = "..."]`, if any.
fn path_attribute(attrs: &[syn::Attribute]) -> Option<String> {
    attrs.iter().find(|a| a.path().is_ident("path")).and_then(|a| match &a.meta {
        syn::Meta::NameValue(nv) => match &nv.value {
            syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(s), .. }) => Some(s.value()),
            _ => None,
        },
        _ => None,
    })
}

/// The crate roots of a package directory: `src/lib.rs`, `src/main.rs` and `src/bin/*.rs`.
pub fn crate_roots(package: &Path) -> Vec<PathBuf> {
    let src = package.join("src");
    let mut roots: Vec<PathBuf> = ["lib.rs", "main.rs"].iter().map(|f| src.join(f)).filter(|p| p.is_file()).collect();
    if let Ok(entries) = std::fs::read_dir(src.join("bin")) {
        let mut bins: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
            .collect();
        bins.sort();
        roots.extend(bins);
    }
    roots
}
