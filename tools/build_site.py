"""Build the documentation site offline: nbdev 2's own notebook processing, then nbconvert, no Quarto.

Usage (from the repository root):  .venv/bin/python tools/build_site.py [--out _site_offline]

The real site is rendered by Quarto in CI (nbdev_docs). Quarto cannot be installed everywhere, so this
script renders the same processed notebooks (`_proc/`, written by `nbdev.serve.proc_nbs`) to static
HTML and honours the Quarto cell options that nbdev leaves in them (echo, output, include, warning,
fig-cap, code-fold, ...). Page names follow Quarto: a notebook's frontmatter `output-file` (which nbdev
sets without the number prefix, e.g. nbs/01_forward.ipynb -> forward.html) or else its stem.
MathJax 3 is served from the site itself (`_mathjax/`, from tools/site/node_modules); no page loads
anything from another host. `tools/check_site.py` opens every page in headless Chromium.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import yaml

TOOLS = Path(__file__).resolve().parent
ASSETS = TOOLS/'site'
TEMPLATES = ASSETS/'templates'
MATHJAX_SRC = ASSETS/'node_modules'/'mathjax'/'es5'
MANIFEST = '_pages.json'          # written into the site: source notebook -> page, for check_site.py


class BuildError(Exception):
    "A problem that stops the build; its message says what to fix"


# ---------------------------------------------------------------------------------------------------
# 1. nbdev processing (the part of nbdev_docs that does not need Quarto)
# ---------------------------------------------------------------------------------------------------
def _ensure_nbdev_entry_point(cfg, root: Path) -> None:
    """nbdev links `name` in markdown to the docs through the `nbdev` entry point that `pip install -e .`
    registers. Without the install, register the same entry point from a temporary dist-info, so that the
    processed notebooks (and README.md) are the same whether or not the package is installed"""
    import atexit
    from importlib.metadata import entry_points
    lib = Path(cfg.lib_path).name
    try: eps = entry_points(group='nbdev')
    except TypeError: eps = entry_points().get('nbdev', [])
    if any(ep.name == lib for ep in eps): return
    tmp = Path(tempfile.mkdtemp(prefix='vdm_site_ep_'))
    atexit.register(shutil.rmtree, tmp, True)
    di = tmp/f'{cfg.lib_name}-{cfg.get("version", "0")}.dist-info'
    di.mkdir()
    (di/'METADATA').write_text(f'Metadata-Version: 2.1\nName: {cfg.lib_name}\nVersion: {cfg.get("version", "0")}\n')
    (di/'entry_points.txt').write_text(f'[nbdev]\n{lib} = {lib}._modidx:d\n')
    sys.path.insert(1, str(tmp))
    os.environ['PYTHONPATH'] = os.pathsep.join([os.environ.get('PYTHONPATH', ''), str(tmp)]).strip(os.pathsep)


def process_notebooks(n_workers: int | None = None, quiet: bool = False):
    "Run nbdev's docs preprocessing (without Quarto) and return (cfg, path of _proc)"
    from nbdev.config import get_config
    cfg = get_config()
    root = Path(cfg.config_path).resolve()
    # nbdev_docs runs with the library installed (pip install -e .); make it importable in any case,
    # for show_doc execution here and in proc_nbs's spawned workers (they inherit sys.path).
    if str(root) not in sys.path: sys.path.insert(0, str(root))
    os.environ['PYTHONPATH'] = os.pathsep.join([str(root)] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p])
    _ensure_nbdev_entry_point(cfg, root)
    import nbdev.doclinks
    import nbdev.quarto
    import nbdev.serve
    t0 = time.time()
    nbdev.quarto.refresh_quarto_yml()
    nbdev.doclinks._build_modidx()
    # force=True: rebuild _proc from scratch so that renamed or deleted notebooks leave nothing behind
    # and the output depends only on the notebooks (make_readme.py must be deterministic).
    kw = {} if n_workers is None else {'n_workers': n_workers}
    try: proc = nbdev.serve.proc_nbs(cfg.nbs_path, force=True, **kw)
    except Exception as e: raise BuildError(f'nbdev processing (proc_nbs) failed: {type(e).__name__}: {e}') from e
    proc = Path(proc)
    if not quiet: print(f'processed notebooks into {proc.relative_to(root)}/ in {time.time()-t0:.1f} s')
    return cfg, proc


# ---------------------------------------------------------------------------------------------------
# 2. Quarto semantics on a processed notebook
# ---------------------------------------------------------------------------------------------------
_re_fm = re.compile(r'^---\s*\n(.*?\S.*?)\n---\s*$', re.DOTALL)
_re_opt = re.compile(r'^\s*#\|(.*)$')


def split_frontmatter(nb) -> dict:
    "Remove the frontmatter raw cell that nbdev's FrontmatterProc put first; return its YAML as a dict"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != 'raw': continue
        m = _re_fm.match(cell.source.strip())
        if not m: continue
        fm = yaml.safe_load(m.group(1)) or {}
        if not isinstance(fm, dict): raise BuildError(f'frontmatter is not a YAML mapping: {cell.source!r}')
        del nb.cells[i]
        return fm
    return {}


def cell_options(source: str) -> tuple[dict, str]:
    "Quarto cell options from the leading `#|` lines, and the source without them"
    lines = source.splitlines()
    bodies, i = [], 0
    while i < len(lines) and _re_opt.match(lines[i]):
        body = _re_opt.match(lines[i]).group(1)
        body = body[1:] if body.startswith(' ') else body
        i += 1
        # nbdev directives such as `#| exports` or `#| hide` are not YAML; block continuations are indented
        if ':' in body or body.startswith((' ', '-')): bodies.append(body.rstrip())
    opts = {}
    try: d = yaml.safe_load('\n'.join(bodies)) if bodies else {}
    except yaml.YAMLError: d = None
    if not isinstance(d, dict):                  # fall back to one option per line
        d = {}
        for b in bodies:
            try: x = yaml.safe_load(b.strip())
            except yaml.YAMLError: continue
            if isinstance(x, dict): d.update(x)
    opts.update({str(k): v for k, v in d.items()})
    return opts, '\n'.join(lines[i:]).strip('\n')


def _false(v) -> bool: return v is False or (isinstance(v, str) and v.strip().lower() == 'false')


def apply_cell_options(nb) -> None:
    """Apply Quarto's cell options in place: include, echo, output, warning, error, fig-cap,
    fig-alt, label, code-fold, code-summary. Leaves the options in cell.metadata.vdm_site"""
    keep = []
    for cell in nb.cells:
        if cell.cell_type != 'code':
            keep.append(cell)
            continue
        opts, src = cell_options(cell.source)
        if _false(opts.get('include', True)): continue
        cell.source = src
        v = {'echo': not _false(opts.get('echo', True))}
        out = opts.get('output', True)
        outputs = list(cell.get('outputs', []))
        if _false(out): outputs = []
        if str(out).lower() == 'asis': v['asis'] = True
        if _false(opts.get('warning', True)):
            outputs = [o for o in outputs if not (o.output_type == 'stream' and o.get('name') == 'stderr')]
        if _false(opts.get('error', True)): outputs = [o for o in outputs if o.output_type != 'error']
        cell.outputs = outputs
        if not v['echo'] or not src.strip(): cell.metadata.setdefault('transient', {})['remove_source'] = True
        tags = list(cell.metadata.get('tags', []))   # nbconvert's celltags() makes them classes celltag_*
        if v.get('asis'): tags.append('vdm-asis')
        if not v['echo']: tags.append('vdm-noecho')
        if tags: cell.metadata['tags'] = tags
        fold = opts.get('code-fold')
        if fold is not None and not _false(fold):
            v['code_fold'] = 'show' if str(fold).lower() == 'show' else True
            v['code_summary'] = str(opts.get('code-summary', 'Code'))
        caps = opts.get('fig-cap')
        if caps is not None:
            caps = [str(c) for c in caps] if isinstance(caps, list) else [str(caps)]
            alts = opts.get('fig-alt')
            alts = [str(a) for a in alts] if isinstance(alts, list) else [str(alts)] * len(caps) if alts else []
            label = str(opts['label']) if 'label' in opts else ''
            figs = [o for o in outputs if o.output_type in ('display_data', 'execute_result')
                    and any(k in o.get('data', {}) for k in ('image/png', 'image/jpeg', 'image/svg+xml'))]
            for j, o in enumerate(figs):
                if len(caps) == 1 and j > 0: break
                if j >= len(caps): break
                o.setdefault('metadata', {})['vdm_site'] = {
                    'fig_cap_md': caps[j],
                    'fig_id': (label if len(figs) == 1 else f'{label}-{j+1}') if label else '',
                    'alt': alts[j] if j < len(alts) else caps[j]}
        cell.metadata['vdm_site'] = v
        keep.append(cell)
    nb.cells = keep


WIDGET_NOTE = '[Interactive widget: run the notebook in Jupyter or Colab to use it.]'


def strip_widgets_and_scripts(nb) -> None:
    "Widget state and JavaScript outputs need a live kernel or a CDN: replace them by static fallbacks"
    nb.metadata.pop('widgets', None)
    for cell in nb.cells:
        for o in cell.get('outputs', []):
            data = o.get('data', {})
            data.pop('application/javascript', None)
            if 'application/vnd.jupyter.widget-view+json' in data:
                data.clear()
                data['text/html'] = f'<p class="widget-note">{WIDGET_NOTE}</p>'
                data['text/plain'] = WIDGET_NOTE


# --- markdown: the pandoc/Quarto syntax that mistune (nbconvert's renderer) does not know ----------
_re_fence = re.compile(r'^\s*(```|~~~)')
_re_attr_link = re.compile(r'(!?)\[((?:[^\[\]]|\[[^\]]*\])*)\]\(([^()\s]+)(\s+"[^"]*")?\)\{([^{}]*)\}')
_re_div_open = re.compile(r'^:::+\s*\{([^}]*)\}\s*$')
_re_div_open_bare = re.compile(r'^:::+\s*([A-Za-z][\w-]*)\s*$')
_re_div_close = re.compile(r'^:::+\s*$')
_re_head_attr = re.compile(r'^(#{1,6}\s.*?)\s*\{([^{}]*)\}\s*$')


def parse_attrs(s: str) -> tuple[str, list[str], dict]:
    "Pandoc attribute block `#id .class key=val` -> (id, classes, attributes)"
    try: toks = shlex.split(s)
    except ValueError: toks = s.split()
    ident, classes, kv = '', [], {}
    for t in toks:
        if t.startswith('#'): ident = t[1:]
        elif t.startswith('.'): classes.append(t[1:])
        elif '=' in t:
            k, val = t.split('=', 1)
            kv[k] = val
    return ident, classes, kv


def _attr_html(ident, classes, kv) -> str:
    parts = []
    if ident: parts.append(f'id="{html.escape(ident)}"')
    if classes: parts.append(f'class="{html.escape(" ".join(classes))}"')
    for k, val in kv.items():
        if re.fullmatch(r'[A-Za-z_:][\w:.-]*', k): parts.append(f'{k}="{html.escape(val)}"')
    return ' '.join(parts)


def _attr_link(m) -> str:
    bang, text, url, title, attrs = m.groups()
    ident, classes, kv = parse_attrs(attrs)
    if title: kv.setdefault('title', title.strip()[1:-1])
    if bang:
        style = ';'.join(f'{k}:{kv.pop(k)}' for k in ('width', 'height') if k in kv)
        if style: kv['style'] = style + (';' + kv['style'] if 'style' in kv else '')
        return f'<img src="{html.escape(url)}" alt="{html.escape(text)}" {_attr_html(ident, classes, kv)}>'
    return f'<a href="{html.escape(url)}" {_attr_html(ident, classes, kv)}>{text}</a>'


def _callout_title(classes, kv) -> str:
    kind = next((c[len('callout-'):] for c in classes if c.startswith('callout-')), '')
    return kv.get('title') or {'note': 'Note', 'tip': 'Tip', 'warning': 'Warning', 'caution': 'Caution',
                               'important': 'Important'}.get(kind, kind.capitalize())


_re_inline_math = re.compile(r'(?<![\\$])\$[^$\n]+?(?<!\\)\$')


def _pipes_in_math(m) -> str:
    "In a table row, `|` inside $...$ would split the cell in CommonMark (pandoc knows better): use \\vert"
    return m.group(0).replace('\\|', '\\Vert ').replace('|', '\\vert ')


def quarto_md(md: str) -> str:
    """Translate the pandoc/Quarto markdown extensions used by nbdev and Quarto authors into
    CommonMark + HTML: link/image attributes `[t](u){...}`, fenced divs `::: {.callout-note}`,
    heading attributes `## Title {#id}`, `|` inside math in table rows. Code fences are left alone"""
    out, fenced = [], False
    for line in md.split('\n'):
        if _re_fence.match(line):
            fenced = not fenced
            out.append(line)
            continue
        if fenced:
            out.append(line)
            continue
        m = _re_div_open.match(line) or _re_div_open_bare.match(line)
        if m:
            ident, classes, kv = parse_attrs(m.group(1)) if m.re is _re_div_open else ('', [m.group(1)], {})
            if any(c.startswith('callout') for c in classes): classes = ['callout'] + classes
            title = _callout_title(classes, kv) if 'callout' in classes else ''
            kv.pop('title', None)
            out += ['', f'<div {_attr_html(ident, classes, kv)}>', '']
            if title: out += [f'<div class="callout-title">{html.escape(title)}</div>', '']
            continue
        if _re_div_close.match(line):
            out += ['', '</div>', '']
            continue
        if line.lstrip().startswith('|'): line = _re_inline_math.sub(_pipes_in_math, line)
        m = _re_head_attr.match(line)
        if m:
            ident, classes, _ = parse_attrs(m.group(2))
            line = m.group(1) + (f' <span class="vdm-hid" data-id="{html.escape(ident)}"></span>' if ident else '')
        out.append(_re_attr_link.sub(_attr_link, line))
    return '\n'.join(out)


def md2html_inline(md: str) -> str:
    "Render a short markdown string (title, description, caption) to HTML without the outer <p>"
    from nbconvert.filters.markdown_mistune import markdown2html_mistune
    h = markdown2html_mistune(quarto_md(md)).strip()
    m = re.fullmatch(r'<p>(.*)</p>', h, re.DOTALL)
    return m.group(1) if m else h


def prepare_markdown(nb) -> None:
    "quarto_md on markdown cells, raw cells without a format (Quarto reads them as markdown) and markdown outputs"
    for cell in nb.cells:
        if cell.cell_type == 'raw' and not cell.metadata.get('raw_mimetype') and not cell.metadata.get('format'):
            cell.cell_type = 'markdown'
            cell.pop('attachments', None)
        if cell.cell_type == 'markdown': cell.source = quarto_md(cell.source)
        for o in cell.get('outputs', []):
            data = o.get('data', {})
            if 'text/markdown' in data:
                md = data['text/markdown']
                data['text/markdown'] = quarto_md(''.join(md) if isinstance(md, list) else md)
            cap = o.get('metadata', {}).get('vdm_site', {})
            if cap.get('fig_cap_md'): cap['fig_cap_html'] = md2html_inline(cap['fig_cap_md'])


_re_code_block = re.compile(r'^\s*(```|~~~).*?^\s*\1', re.DOTALL | re.MULTILINE)
_re_code_span = re.compile(r'(`+).+?\1', re.DOTALL)
_re_bs_math = re.compile(r'(?<!\\)\\\((.+?)\\\)|(?<!\\)\\\[(.+?)\\\]', re.DOTALL)


def lint_markdown_math(nb) -> list[str]:
    r"""Markdown cells using \( \) or \[ \]: Quarto (pandoc) and nbconvert read `\(` as an escaped
    parenthesis, so the real site would show plain brackets instead of math"""
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != 'markdown': continue
        text = _re_code_span.sub('', _re_code_block.sub('', cell.source))
        for m in _re_bs_math.finditer(text):
            first = cell.source.strip().splitlines()[0][:40]
            found.append(f'markdown cell starting {first!r}: {m.group(0)[:60]!r}: write $...$ (inline) or $$...$$ (display) instead')
    return found


_re_block_start = re.compile(r'^ {0,3}(?:[-*+]\s+\S|1[.)]\s+\S|#{1,6}\s|>)')
_re_list_item = re.compile(r'^\s*(?:[-*+]|\d+[.)])\s+')


def lint_pandoc_blocks(nb) -> list[str]:
    """Markdown that CommonMark (nbconvert) renders as a list/heading/quote but pandoc (Quarto) does not:
    pandoc needs a blank line before a list, a heading or a block quote that follows a paragraph line"""
    found = []
    for cell in nb.cells:
        if cell.cell_type != 'markdown': continue
        prev, in_list, fenced, math = '', False, False, False
        for line in cell.source.split('\n'):
            if _re_fence.match(line):
                fenced, prev = not fenced, ''        # a code block is a block of its own
                continue
            odd = line.count('$$') % 2 == 1        # opens or closes a display-math block
            if fenced or math:
                if odd and not fenced: math, prev = False, 'x'
                continue
            if not line.strip():
                prev, in_list = '', False
                continue
            if _re_list_item.match(line) and not prev: in_list = True
            is_para = bool(prev) and not _re_block_start.match(prev) and not prev.lstrip().startswith(('|', '<', '$$'))
            if _re_block_start.match(line) and is_para and not in_list:
                first = cell.source.strip().splitlines()[0][:40]
                found.append(f'markdown cell starting {first!r}: {line.strip()[:50]!r} follows a paragraph line without a '
                             'blank line: Quarto (pandoc) would run it into the paragraph; add an empty line before it')
            prev = line
            if odd: math = True
    return found


def process_nb_for_page(nb) -> dict:
    "All notebook-level transformations before nbconvert; returns the frontmatter"
    fm = split_frontmatter(nb)
    apply_cell_options(nb)
    strip_widgets_and_scripts(nb)
    prepare_markdown(nb)
    return fm


# ---------------------------------------------------------------------------------------------------
# 3. pages, links, sidebar
# ---------------------------------------------------------------------------------------------------
def page_path(rel_nb: Path, fm: dict) -> str:
    "Site-relative posix path of the page for a notebook, as Quarto names it"
    name = str(fm.get('output-file') or rel_nb.with_suffix('.html').name)
    if not name.endswith('.html'): name += '.html'
    return (rel_nb.parent/name).as_posix()


def rel_href(target: str, from_page: str) -> str:
    "Relative URL from page `from_page` to site path `target` (both site-relative posix paths)"
    d = posixpath.dirname(from_page) or '.'
    return posixpath.relpath(target, d)


def pandoc_id(text: str) -> str:
    "Pandoc's auto_identifiers algorithm (what Quarto gives a heading)"
    s = re.sub(r'[^\w\s.-]', '', text, flags=re.UNICODE).strip().lower()
    s = re.sub(r'\s+', '-', s)
    s = re.sub(r'^[^a-z]+', '', s) if not re.match(r'^[^\W\d_]', s) else s
    return s or 'section'


class LinkMapper:
    "Rewrites internal links: notebook paths -> their pages, site-absolute and doc-host URLs -> relative"
    def __init__(self, nb2page: dict[str, str], doc_base: str):
        self.nb2page, self.doc_base = nb2page, doc_base.rstrip('/')

    def site_path(self, href: str, page: str) -> tuple[str, str] | None:
        "(site path, fragment) for an internal href, or None if external"
        u = urlsplit(href)
        path = u.path
        if u.scheme or u.netloc:
            full = urlunsplit((u.scheme, u.netloc, u.path, '', ''))
            if not (self.doc_base and (full == self.doc_base or full.startswith(self.doc_base + '/'))): return None
            path = '/' + full[len(self.doc_base):].lstrip('/')
        if u.scheme in ('mailto', 'javascript', 'data'): return None
        if not path: return None
        if path.startswith('/'): sp = posixpath.normpath(path.lstrip('/') or 'index.html')
        else: sp = posixpath.normpath(posixpath.join(posixpath.dirname(page), path))
        if path.endswith('/') or sp == '.': sp = posixpath.join('' if sp == '.' else sp, 'index.html')
        if sp.endswith('.ipynb'): sp = self.nb2page.get(sp, sp[:-len('.ipynb')] + '.html')
        return sp, u.fragment

    def rewrite(self, href: str, page: str) -> str:
        r = self.site_path(href, page)
        if r is None: return href
        sp, frag = r
        return rel_href(sp, page) + (f'#{frag}' if frag else '')


def fix_body_html(body: str, page: str, links: LinkMapper):
    "Heading ids as pandoc makes them, internal links rewritten; returns (html, toc entries)"
    from bs4 import BeautifulSoup
    soup = BeautifulSoup(body, 'html.parser')
    used, toc = set(), []
    for el in soup.find_all(id=True):
        if el.name not in ('h1', 'h2', 'h3', 'h4', 'h5', 'h6'): used.add(el['id'])
    for h in soup.find_all(['h1', 'h2', 'h3', 'h4', 'h5', 'h6']):
        anchor = h.find('a', class_='anchor-link')
        if anchor: anchor.extract()
        hid = h.find('span', class_='vdm-hid')
        if hid:
            ident = hid['data-id']
            hid.decompose()
        else:
            base = pandoc_id(h.get_text(' ', strip=True))
            ident, k = base, 0
            while ident in used:
                k += 1
                ident = f'{base}-{k}'
        used.add(ident)
        h['id'] = ident
        text = ' '.join(h.get_text().split())
        a = soup.new_tag('a', attrs={'class': 'anchor-link', 'href': f'#{ident}', 'aria-label': 'link to this section'})
        a.string = '¶'
        h.append(a)
        if h.name in ('h2', 'h3'): toc.append((int(h.name[1]), ident, text))
    for tag, attr in (('a', 'href'), ('img', 'src'), ('source', 'src')):
        for el in soup.find_all(tag):
            if el.get(attr) and not el[attr].startswith('#'): el[attr] = links.rewrite(el[attr], page)
    return str(soup), toc


def toc_html(toc) -> str:
    if len(toc) < 2: return ''
    parts, open_sub = ['<ul>'], False
    for level, ident, text in toc:
        if level == 3 and not open_sub and len(parts) > 1:
            parts[-1] = parts[-1][:-len('</li>')] + '<ul>'
            open_sub = True
        elif level == 2 and open_sub:
            parts.append('</ul></li>')
            open_sub = False
        parts.append(f'<li><a href="#{html.escape(ident)}">{html.escape(text)}</a></li>')
    if open_sub: parts.append('</ul></li>')
    parts.append('</ul>')
    return ''.join(parts)


def read_sidebar(nbs_path: Path) -> list:
    "website.sidebar.contents from the project's _quarto.yml"
    qy = nbs_path/'_quarto.yml'
    if not qy.exists(): raise BuildError(f'{qy} not found')
    q = yaml.safe_load(qy.read_text(encoding='utf-8')) or {}
    sb = (q.get('website') or {}).get('sidebar') or {}
    if isinstance(sb, list): sb = sb[0] if sb else {}
    contents = sb.get('contents')
    if contents is None: return ['auto']
    return contents if isinstance(contents, list) else [contents]


def sidebar_html(contents: list, pages: dict, cur: str, nb2page: dict, listed: set) -> str:
    "Nested <ul> for the sidebar; `pages` maps page path -> title; fails on entries without a notebook"
    def item(entry) -> str:
        if isinstance(entry, str):
            if entry == 'auto':
                return ''.join(item(p) for p in sorted(nb2page, key=lambda s: (s.count('/'), s != 'index.ipynb', s)))
            page = nb2page.get(posixpath.normpath(entry), entry if entry in pages else None)
            if page is None: raise BuildError(f'sidebar entry {entry!r} in _quarto.yml names no notebook in nbs/')
            listed.add(page)
            cls = ' class="active" aria-current="page"' if page == cur else ''
            return f'<li><a href="{rel_href(page, cur)}"{cls}>{html.escape(pages[page])}</a></li>'
        if isinstance(entry, dict) and 'section' in entry:
            title = html.escape(str(entry['section']))
            head = f'<span class="section-title">{title}</span>'
            if entry.get('href'):
                page = nb2page.get(posixpath.normpath(entry['href']))
                if page is None: raise BuildError(f'sidebar section href {entry["href"]!r} names no notebook')
                listed.add(page)
                head = f'<a class="section-title{" active" if page == cur else ""}" href="{rel_href(page, cur)}">{title}</a>'
            inner = ''.join(item(e) for e in entry.get('contents') or [])
            return f'<li class="section">{head}<ul>{inner}</ul></li>'
        if isinstance(entry, dict) and 'href' in entry:
            href = str(entry['href'])
            page = nb2page.get(posixpath.normpath(href))
            text = html.escape(str(entry.get('text') or (pages[page] if page else href)))
            if page: listed.add(page)
            target = rel_href(page, cur) if page else href
            return f'<li><a href="{html.escape(target)}">{text}</a></li>'
        if isinstance(entry, dict) and str(entry.get('text', '')).strip('-') == '': return '<li><hr></li>'
        raise BuildError(f'sidebar entry {entry!r} in _quarto.yml is not understood')
    return '<ul>' + ''.join(item(e) for e in contents) + '</ul>'


# ---------------------------------------------------------------------------------------------------
# 4. the build
# ---------------------------------------------------------------------------------------------------
def ensure_mathjax() -> Path:
    "tools/site/node_modules/mathjax/es5, installed with `npm ci` from the lock file when missing"
    if not (MATHJAX_SRC/'tex-chtml-full.js').exists():
        npm = shutil.which('npm')
        if not npm: raise BuildError(f'{MATHJAX_SRC} is missing and npm is not installed: install Node.js/npm, '
                                     f'then run `npm ci --prefix {ASSETS}`')
        print(f'installing MathJax: npm ci --prefix {ASSETS.relative_to(Path.cwd()) if ASSETS.is_relative_to(Path.cwd()) else ASSETS}')
        r = subprocess.run([npm, 'ci', '--no-audit', '--no-fund', '--prefix', str(ASSETS)], capture_output=True, text=True)
        if r.returncode or not (MATHJAX_SRC/'tex-chtml-full.js').exists():
            raise BuildError(f'`npm ci --prefix {ASSETS}` failed:\n{r.stdout}\n{r.stderr}')
    return MATHJAX_SRC


_re_cdn = re.compile(r"""<script\b[^>]*\bsrc\s*=\s*["']?\s*(?:https?:)?//"""
                     r"""|<link\b[^>]*\bhref\s*=\s*["']?\s*(?:https?:)?//"""
                     r"""|url\(\s*["']?\s*(?:https?:)?//"""
                     r"""|cdn\.jsdelivr\.net|cdnjs\.cloudflare\.com|unpkg\.com""", re.IGNORECASE)


def check_no_cdn(out: Path) -> list[str]:
    "Remote scripts, stylesheets or fonts referenced by our pages/CSS (vendored _mathjax/ excluded)"
    bad = []
    for f in sorted(out.rglob('*')):
        if f.suffix not in ('.html', '.css', '.js') or '_mathjax' in f.relative_to(out).parts: continue
        for m in _re_cdn.finditer(f.read_text(encoding='utf-8', errors='replace')):
            bad.append(f'{f.relative_to(out)}: {m.group(0)[:120]}')
    return bad


def build(out: Path, n_workers: int | None = None) -> list[str]:
    "Build the whole site into `out`; returns the page paths written"
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import ExtractOutputPreprocessor
    from pygments.formatters import HtmlFormatter

    mathjax = ensure_mathjax()
    cfg, proc = process_notebooks(n_workers)
    nbs_path = Path(cfg.nbs_path)
    t0 = time.time()

    nb_files = sorted(p for p in proc.rglob('*.ipynb') if not any(s.startswith(('.', '_')) for s in p.relative_to(proc).parts))
    if not nb_files: raise BuildError(f'no processed notebooks in {proc}: are there notebooks in {nbs_path}?')

    # pass 1: read, apply Quarto semantics, name the pages
    docs, nb2page, titles, lint = [], {}, {}, []
    for f in nb_files:
        rel = f.relative_to(proc)
        nb = nbformat.read(f, as_version=4)
        lint += [f'{(Path(nbs_path.name)/rel).as_posix()}: {m}' for m in lint_markdown_math(nb) + lint_pandoc_blocks(nb)]
        fm = process_nb_for_page(nb)
        page = page_path(rel, fm)
        if page in titles: raise BuildError(f'two notebooks render to the same page {page}: rename one or set output-file')
        nb2page[rel.as_posix()] = page
        titles[page] = str(fm.get('title') or rel.stem)
        docs.append((rel, nb, fm, page))

    if out.exists() and any(out.iterdir()):
        if not (out/MANIFEST).exists() or Path(cfg.config_path).resolve().is_relative_to(out):
            raise BuildError(f'refusing to replace {out}: it is not a site written by this script (no {MANIFEST}); '
                             'choose another --out or remove it yourself')
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    # static files that proc_nbs copied (images next to notebooks, styles.css, ...)
    extra_files = set()
    for f in sorted(proc.rglob('*')):
        rel = f.relative_to(proc)
        if f.is_dir() or f.suffix in ('.ipynb', '.yml', '.yaml') or any(s.startswith('.') for s in rel.parts): continue
        (out/rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, out/rel)
        extra_files.add(rel.as_posix())
    shutil.copytree(mathjax, out/'_mathjax')
    (out/'_static').mkdir()
    shutil.copy2(ASSETS/'site.css', out/'_static'/'site.css')
    (out/'_static'/'pygments.css').write_text(HtmlFormatter(style='default').get_style_defs('.highlight') + '\n', encoding='utf-8')
    (out/'.nojekyll').write_text('')

    q = yaml.safe_load((nbs_path/'_quarto.yml').read_text(encoding='utf-8')) or {}
    css = ((q.get('format') or {}).get('html') or {}).get('css') or []
    extra_css = [c for c in ([css] if isinstance(css, str) else css) if c in extra_files]
    contents = read_sidebar(nbs_path)
    doc_base = f"{cfg.get('doc_host', '')}{cfg.get('doc_baseurl', '')}"
    links = LinkMapper(nb2page, doc_base)
    page_tpl = jinja2.Environment(loader=jinja2.FileSystemLoader(str(ASSETS)), autoescape=False,
                                  keep_trailing_newline=True).get_template('page.html.j2')

    exporter = HTMLExporter(template_name='vdm_site', extra_template_basedirs=[str(TEMPLATES)],
                            exclude_input_prompt=True, exclude_output_prompt=True)
    extract = ExtractOutputPreprocessor(extract_output_types={'image/png', 'image/jpeg'})
    listed, written, problems = set(), [], []
    for rel, nb, fm, page in docs:
        stem = posixpath.splitext(posixpath.basename(page))[0]
        res = {'unique_key': 'output', 'output_files_dir': f'{stem}_files', 'outputs': {},
               'metadata': {'name': stem, 'path': str(proc/rel.parent)}}
        nb, res = extract.preprocess(nb, res)
        for cell in nb.cells:       # the alt text of a captioned figure
            for o in cell.get('outputs', []):
                fig = o.get('metadata', {}).get('vdm_site')
                if fig and fig.get('alt'):
                    for mime in ('image/png', 'image/jpeg'):
                        if mime in o.get('data', {}): o['metadata'].setdefault(mime, {})['alt'] = fig['alt']
        try: body, res = exporter.from_notebook_node(nb, resources=res)
        except Exception as e: raise BuildError(f'nbconvert failed on {rel}: {type(e).__name__}: {e}') from e
        page_dir = out/posixpath.dirname(page)
        page_dir.mkdir(parents=True, exist_ok=True)
        for name, data in sorted(res.get('outputs', {}).items()):
            (page_dir/name).parent.mkdir(parents=True, exist_ok=True)
            (page_dir/name).write_bytes(data)
        body, toc = fix_body_html(body, page, links)
        if re.search(r'Traceback \(most recent call last\)|class="[^"]*output_error', body):
            problems.append(f'{page}: a saved output contains a Python traceback (tools/check_site.py fails on it)')
        root = '' if posixpath.dirname(page) == '' else '../' * page.count('/')
        title = titles[page]
        desc = str(fm.get('description') or '')
        html_page = page_tpl.render(
            root=root, page_title=re.sub(r'[$\\]', '', title), site_title=cfg.get('title', cfg.lib_name),
            site_description=cfg.get('description', ''), description_text=re.sub(r'[$\\]', '', desc),
            title_html=md2html_inline(title), description_html=md2html_inline(desc) if desc else '',
            sidebar_html=sidebar_html(contents, titles, page, nb2page, listed), body=body,
            toc_html=toc_html(toc), extra_css=extra_css, repo_url=cfg.get('git_url', ''),
            source_path=(Path(nbs_path.name)/rel).as_posix())
        (out/page).write_text(html_page, encoding='utf-8')
        written.append(page)
        print(f'  wrote {page:<40} from {(Path(nbs_path.name)/rel).as_posix()}')

    (out/MANIFEST).write_text(json.dumps({'pages': {(Path(nbs_path.name)/r).as_posix(): p for r, _, _, p in docs},
                                          'titles': titles}, indent=1, sort_keys=True) + '\n', encoding='utf-8')
    if 'index.html' not in written: raise BuildError(f'no index.html: {nbs_path}/index.ipynb is missing')
    unlisted = sorted(set(written) - listed)
    if unlisted: print(f'note: pages not in the sidebar (_quarto.yml website.sidebar.contents): {", ".join(unlisted)}')
    cdn = check_no_cdn(out)
    if cdn: raise BuildError('remote (CDN) resources referenced in the site:\n  ' + '\n  '.join(cdn))
    for p in problems: print(f'WARNING: {p}')
    if lint: raise BuildError('markdown that the real (Quarto) site would render differently:\n  ' + '\n  '.join(lint))
    print(f'{len(written)} pages written to {out} in {time.time()-t0:.1f} s (plus processing)')
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', default='_site_offline', help='output folder (default: _site_offline)')
    ap.add_argument('--workers', type=int, default=None, help="processes for nbdev's proc_nbs (default: nbdev's)")
    a = ap.parse_args(argv)
    try: build(Path(a.out).resolve(), a.workers)
    except BuildError as e:
        print(f'build_site.py: ERROR: {e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
