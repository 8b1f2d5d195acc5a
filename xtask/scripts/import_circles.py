#!/usr/bin/env python3
"""Import circles between the files of each crate: file A uses an item of file B and B one of A,
directly or through a chain (strongly connected components of the file graph). Inline
`#[cfg(test)] mod tests` blocks are left out. Usage: import_circles.py [ROOT]"""
import os, re, sys

root = sys.argv[1] if len(sys.argv) > 1 else '.'

def crates(root):
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in ('target', '.git', 'fixtures')]
        if 'Cargo.toml' in files and os.path.isdir(os.path.join(dirpath, 'src')):
            yield os.path.join(dirpath, 'src')

def module_of(src, path):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] in ('mod', 'lib', 'main'):
        rel = rel[:-1]
    if rel and rel[0] == 'bin':
        return None
    return tuple(rel)

def strip_tests(text):
    m = re.search(r'#\[cfg\(test\)\]\s*(pub(\(crate\))? )?mod \w+\s*\{', text)
    return text[:m.start()] if m else text

def paths_in_use(text):
    """crate::/super::/self:: paths, with `use a::{b, c::d}` groups expanded. Comments are left
    out, and so are re-exports (`pub use`): a facade is not a use of what it re-exports."""
    out = []
    text = re.sub(r'//[^\n]*', '', text)
    text = re.sub(r'\bpub(\([^)]*\))?\s+use\s+[^;]+;', '', text)
    for m in re.finditer(r'\buse\s+([^;]+);', text, re.S):
        out += expand(re.sub(r'\s+', '', m.group(1)))
    for m in re.finditer(r'\b((?:crate|super|self)(?:::\w+)+)', text):
        out.append(m.group(1))
    return out

def expand(tree):
    m = re.match(r'^(.*?)::\{(.*)\}$', tree)
    if not m:
        return [tree.split(' as ')[0]]
    prefix, body = m.group(1), m.group(2)
    parts, depth, cur = [], 0, ''
    for ch in body:
        if ch == ',' and depth == 0:
            parts.append(cur); cur = ''
        else:
            depth += ch == '{'; depth -= ch == '}'; cur += ch
    parts.append(cur)
    res = []
    for p in parts:
        if p in ('self', ''):
            res.append(prefix)
        else:
            res += expand(prefix + '::' + p)
    return res

for src in sorted(crates(root)):
    files = {}
    for dirpath, _, names in os.walk(src):
        for n in names:
            if n.endswith('.rs'):
                p = os.path.join(dirpath, n)
                mod = module_of(src, p)
                if mod is not None and mod not in files:
                    files[mod] = p
    edges = {m: set() for m in files}
    for mod, p in files.items():
        text = strip_tests(open(p).read())
        is_dir_mod = os.path.basename(p) in ('mod.rs', 'lib.rs', 'main.rs')
        for path in paths_in_use(text):
            segs = path.split('::')
            if segs[0] == 'crate':
                target = []
            elif segs[0] in ('super', 'self'):
                target = list(mod) if is_dir_mod else list(mod)
                # a file module's `self` is itself; `super` is its parent
                if not is_dir_mod:
                    pass
                while segs and segs[0] in ('super', 'self'):
                    if segs[0] == 'super':
                        target = target[:-1]
                    segs = segs[1:]
                segs = ['crate'] + segs
            else:
                continue
            segs = segs[1:]
            best = ()
            cur = tuple(target)
            if cur in files:
                best = cur
            for s in segs:
                cur = cur + (s,)
                if cur in files:
                    best = cur
                else:
                    break
            if best != mod and best in files:
                edges[mod].add(best)
    # Tarjan
    index, low, stack, on, comps, i = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)
    def strong(v):
        index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1:
                comps.append(comp)
    for v in files:
        if v not in index:
            strong(v)
    for comp in comps:
        names = sorted(os.path.relpath(files[m], root) for m in comp)
        print(f'{os.path.relpath(src, root)}: circle of {len(names)}: ' + ', '.join(names))
