"""Open every page of the offline docs site in headless Chromium and fail on what a reader would see broken.

Usage (from the repository root):
    .venv/bin/python tools/check_site.py [_site_offline] [--shots DIR] [--all-shots]
    .venv/bin/python tools/check_site.py --self-test     # proves each check can fail

Serves the site from localhost (http.server, random free port) and, for every .html page, fails on:
TeX left untypeset (mjx-merror elements; $$, \\(, \\[ or a $..\\cmd..$ pair in the visible text outside
<pre>/<code>; math markup in the HTML but no mjx-container), images that do not load, internal links
to missing files or anchors, 404s for page resources, resources fetched from another host (CDN),
Python tracebacks / error outputs, and SEVERE entries in the browser console.
Saves full-page screenshots of the pages built from index.ipynb and 01_forward.ipynb.
"""
from __future__ import annotations

import argparse
import html.parser
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

CHROMIUM = os.environ.get('CHROMIUM', '/usr/bin/chromium')
CHROMEDRIVER = os.environ.get('CHROMEDRIVER', '/usr/bin/chromedriver')
SHOT_SOURCES = ('nbs/index.ipynb', 'nbs/01_forward.ipynb')   # screenshots of the pages built from these
SKIP_DIRS = ('_mathjax', '_screenshots')


# ---------------------------------------------------------------------------------------------------
# static side: files, ids, math markup
# ---------------------------------------------------------------------------------------------------
class _HtmlScan(html.parser.HTMLParser):
    "ids/names in a page, and its text outside pre/code/script/style (to know whether it has math)"
    SKIP = {'pre', 'code', 'script', 'style', 'textarea', 'title'}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids, self.text, self._skip = set(), [], []

    def handle_starttag(self, tag, attrs):
        d = dict(attrs)
        if d.get('id'): self.ids.add(d['id'])
        if tag == 'a' and d.get('name'): self.ids.add(d['name'])
        if tag in self.SKIP: self._skip.append(tag)

    def handle_endtag(self, tag):
        if self._skip and self._skip[-1] == tag: self._skip.pop()

    def handle_data(self, data):
        if not self._skip: self.text.append(data)


_ids_cache: dict[Path, set] = {}


def page_ids(f: Path) -> set:
    if f not in _ids_cache:
        p = _HtmlScan()
        p.feed(f.read_text(encoding='utf-8', errors='replace'))
        _ids_cache[f] = p.ids
    return _ids_cache[f]


_re_math_markup = re.compile(r'\$\$|\\\(|\\\[|\\begin\{|\$[^$\s][^$\n]*?[\\^_][^$\n]*?\$')


def has_math_markup(f: Path) -> bool:
    p = _HtmlScan()
    p.feed(f.read_text(encoding='utf-8', errors='replace'))
    return bool(_re_math_markup.search(' '.join(p.text)))


_re_tex_left = re.compile(r'\$\$|\\\(|\\\)|\\\[|\\\]|\$[^$\n]{0,200}?\\[A-Za-z]+[^$\n]{0,200}?\$')


def tex_left(text: str) -> list[str]:
    "Snippets of visible text that still look like TeX"
    return [text[max(0, m.start()-30):m.end()+30].replace('\n', ' ') for m in _re_tex_left.finditer(text)]


# ---------------------------------------------------------------------------------------------------
# the server
# ---------------------------------------------------------------------------------------------------
class _Handler(SimpleHTTPRequestHandler):
    missing: list            # (path, status) of failed requests, set per server

    def log_message(self, format, *args): pass

    def send_error(self, code, message=None, explain=None):
        type(self).missing.append((unquote(self.path), code))
        super().send_error(code, message, explain)


def serve(site: Path):
    handler = type('Handler', (_Handler,), {'missing': []})
    httpd = ThreadingHTTPServer(('127.0.0.1', 0), partial(handler, directory=str(site)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, handler


# ---------------------------------------------------------------------------------------------------
# the browser
# ---------------------------------------------------------------------------------------------------
def start_browser(profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    for exe in (CHROMIUM, CHROMEDRIVER):
        if not Path(exe).exists():
            raise SystemExit(f'check_site.py: {exe} not found: apt-get install -y chromium chromium-driver '
                             '(or set CHROMIUM / CHROMEDRIVER)')
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
              '--disable-background-networking', '--disable-component-update', '--disable-sync',
              '--disable-dev-shm-usage', '--hide-scrollbars', '--window-size=1280,900',
              f'--user-data-dir={profile}'):
        opts.add_argument(a)
    opts.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    drv = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    drv.set_page_load_timeout(60)
    drv.set_script_timeout(60)
    return drv


_JS_WAIT_MATHJAX = r"""
const done = arguments[arguments.length - 1];
const t0 = Date.now();
const hasScript = !!document.querySelector('script[src*="mathjax" i], script[id="MathJax-script"]');
(function wait() {
  const MJ = window.MathJax;
  if (MJ && MJ.startup && MJ.startup.promise) {
    MJ.startup.promise
      .then(() => (MJ.typesetPromise ? MJ.typesetPromise() : null))
      .then(() => done({loaded: true, hasScript: hasScript, err: null}),
            e => done({loaded: true, hasScript: hasScript, err: String(e)}));
  } else if (!hasScript || (document.readyState === 'complete' && Date.now() - t0 > 2000) || Date.now() - t0 > 20000) {
    // a deferred script has run before the load event: no MathJax.startup by then means it failed
    done({loaded: false, hasScript: hasScript, err: null});
  } else setTimeout(wait, 50);
})();
"""

_JS_COLLECT = r"""
const skip = new Set(['PRE', 'CODE', 'SCRIPT', 'STYLE', 'TEXTAREA', 'NOSCRIPT', 'MJX-CONTAINER', 'MJX-ASSISTIVE-MML']);
const texts = [];
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
for (let n = walker.nextNode(); n; n = walker.nextNode()) {
  let el = n.parentElement, ok = true;
  for (let a = el; a; a = a.parentElement) { if (skip.has(a.tagName.toUpperCase())) { ok = false; break; } }
  if (!ok || !n.nodeValue.trim()) continue;
  if (el.checkVisibility && !el.checkVisibility({visibilityProperty: true})) continue;
  texts.push(n.nodeValue);
}
// TeX errors: merror nodes, and undefined macros that MathJax's noundefined extension shows in red
const texErrors = [];
try {
  for (const item of (window.MathJax && MathJax.startup && MathJax.startup.document) ? MathJax.startup.document.math : []) {
    if (!item.root) continue;
    const mml = MathJax.startup.toMML(item.root);
    const bad = /<merror/.test(mml) || /mathcolor="red"/.test(mml);
    if (bad) texErrors.push(String(item.math).slice(0, 120) + '  =>  ' +
        (mml.match(/<mtext[^>]*>([^<]*)<\/mtext>/g) || []).map(t => t.replace(/<[^>]+>/g, '')).join(' ').slice(0, 120));
  }
} catch (e) { texErrors.push('could not inspect MathJax items: ' + e); }
const errSel = '.output_error, .jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"], .cell-output-error';
return {
  visibleText: texts.join(' '),
  allText: document.body ? document.body.innerText : '',
  texErrors: texErrors,
  merrors: Array.from(document.querySelectorAll('mjx-merror')).map(
      e => (e.getAttribute('data-mjx-error') || '') + ' | ' + e.textContent.slice(0, 80)),
  mjx: document.querySelectorAll('mjx-container').length,
  badImages: Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))
      .map(i => i.getAttribute('src') || '(no src)'),
  links: Array.from(document.querySelectorAll('a[href]')).map(a => [a.getAttribute('href'), a.href]),
  resources: Array.from(document.querySelectorAll('link[href], script[src]')).map(
      e => [e.getAttribute('href') || e.getAttribute('src'), e.href || e.src, e.tagName, e.rel || '']),
  loaded: performance.getEntriesByType('resource').map(r => r.name),
  ids: Array.from(document.querySelectorAll('[id], a[name]')).map(e => e.id || e.getAttribute('name')),
  errorAreas: Array.from(document.querySelectorAll(errSel)).map(e => e.textContent.slice(0, 200)),
  stderrAreas: Array.from(document.querySelectorAll('.output_stderr')).map(e => e.textContent),
};
"""


def full_page_screenshot(drv, path: Path, part_h: int = 2400) -> list[Path]:
    """Full-page PNG at `path` (captured in slices, stitched with Pillow), plus `path`_partNN.png
    slices of `part_h` px when the page is long, which are easier to look at"""
    import base64, io
    from PIL import Image
    m = drv.execute_cdp_cmd('Page.getLayoutMetrics', {})
    size = m.get('cssContentSize') or m['contentSize']
    w, h = int(size['width']), int(size['height'])
    slices = []
    for y in range(0, h, 8000):
        shot = drv.execute_cdp_cmd('Page.captureScreenshot', {
            'format': 'png', 'captureBeyondViewport': True, 'fromSurface': True,
            'clip': {'x': 0, 'y': y, 'width': w, 'height': min(8000, h - y), 'scale': 1}})
        slices.append(Image.open(io.BytesIO(base64.b64decode(shot['data']))).convert('RGB'))
    full = Image.new('RGB', (max(i.width for i in slices), sum(i.height for i in slices)), 'white')
    y = 0
    for i in slices:
        full.paste(i, (0, y))
        y += i.height
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in path.parent.glob(f'{path.stem}_part*.png'): old.unlink()
    full.save(path)
    written = [path]
    if full.height > part_h * 5 // 4:
        for k, top in enumerate(range(0, full.height, part_h)):
            part = path.with_name(f'{path.stem}_part{k+1:02d}.png')
            full.crop((0, top, full.width, min(full.height, top + part_h))).save(part)
            written.append(part)
    return written


def check_page(drv, base: str, site: Path, page: str, handler) -> list[str]:
    "Problems of one page, as human-readable strings"
    probs = []
    handler.missing.clear()
    drv.get(base + page)
    st = drv.execute_async_script(_JS_WAIT_MATHJAX)
    d = drv.execute_script(_JS_COLLECT)
    f = site/page

    # math
    math_markup = has_math_markup(f)
    if st['hasScript'] and not st['loaded']: probs.append('MathJax did not load (script missing or failing)')
    if st['err']: probs.append(f'MathJax typeset error: {st["err"]}')
    for e in d['merrors']: probs.append(f'TeX error (mjx-merror): {e.strip()}')
    for e in d['texErrors']: probs.append(f'TeX error (undefined macro or error node): {e}')
    for s in tex_left(d['visibleText']): probs.append(f'TeX left untypeset in visible text: ...{s}...')
    if math_markup and d['mjx'] == 0: probs.append('page has math markup but no mjx-container was rendered')

    # images
    for src in d['badImages']: probs.append(f'image does not load: {src}')

    # links and resources
    host = urlsplit(base).netloc
    own_ids = set(d['ids'])
    for raw, absu in d['links']:
        u = urlsplit(absu)
        if u.scheme not in ('http', 'https') or u.netloc != host: continue
        path = unquote(u.path).lstrip('/')
        target = site/path
        if path == '' or path.endswith('/') or target.is_dir(): target = target/'index.html'
        if not target.is_file():
            probs.append(f'broken link: {raw} (no file {target.relative_to(site).as_posix()})')
            continue
        frag = unquote(u.fragment)
        if frag and target.suffix == '.html':
            ids = own_ids if target.resolve() == f.resolve() else page_ids(target)
            if frag not in ids: probs.append(f'broken anchor: {raw} (no id "{frag}" in {target.relative_to(site).as_posix()})')
    for raw, absu, tag, rel in d['resources']:
        if rel and 'icon' in rel and absu.startswith('data:'): continue
        u = urlsplit(absu)
        if u.scheme in ('http', 'https') and u.netloc != host:
            probs.append(f'{tag.lower()} loads from another host: {raw}')
    for r in d['loaded']:
        u = urlsplit(r)
        if u.scheme in ('http', 'https') and u.netloc != host: probs.append(f'resource fetched from another host: {r}')
    for path, code in handler.missing: probs.append(f'HTTP {code} for {path}')

    # tracebacks and error outputs
    if 'Traceback (most recent call last)' in d['allText']: probs.append('page shows a Python traceback')
    for t in d['errorAreas']: probs.append(f'error output: {" ".join(t.split())[:120]}')
    for t in d['stderrAreas']:
        for m in re.finditer(r'\b\w*(?:Error|Exception)\b:.*', t): probs.append(f'error in stderr output: {m.group(0)[:120]}')

    # console
    try: logs = drv.get_log('browser')
    except Exception: logs = []
    for e in logs:
        if e.get('level') == 'SEVERE': probs.append(f'console error: {e.get("message", "")[:200]}')
    return probs


def list_pages(site: Path) -> list[str]:
    return sorted(p.relative_to(site).as_posix() for p in site.rglob('*.html')
                  if not any(s in SKIP_DIRS for s in p.relative_to(site).parts))


def shot_name(page: str, manifest: dict) -> str | None:
    src = {v: k for k, v in manifest.get('pages', {}).items()}.get(page)
    return Path(src).stem if src else None


def check_site(site: Path, shots: Path | None, all_shots: bool = False, quiet: bool = False) -> dict[str, list[str]]:
    "{page: problems} for every page of the site"
    site = site.resolve()
    pages = list_pages(site)
    if not pages: raise SystemExit(f'check_site.py: no .html pages in {site}: build it with tools/build_site.py')
    manifest = json.loads((site/'_pages.json').read_text()) if (site/'_pages.json').exists() else {}
    wanted = {manifest.get('pages', {}).get(s) for s in SHOT_SOURCES} - {None}
    if not manifest and 'index.html' in pages: wanted = {'index.html'}
    results = {}
    httpd, handler = serve(site)
    profile = tempfile.mkdtemp(prefix='check_site_chromium_')
    drv = None
    try:
        drv = start_browser(profile)
        base = f'http://127.0.0.1:{httpd.server_address[1]}/'
        for page in pages:
            t0 = time.time()
            try: probs = check_page(drv, base, site, page, handler)
            except Exception as e: probs = [f'checker could not load the page: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}']
            if shots is not None and (all_shots or page in wanted):
                name = shot_name(page, manifest) or page[:-len('.html')].replace('/', '__')
                try: full_page_screenshot(drv, shots/f'{name}.png')
                except Exception as e: probs.append(f'screenshot failed: {type(e).__name__}: {e}')
            results[page] = probs
            if not quiet:
                print(f'{"OK  " if not probs else "FAIL"} {page} ({time.time()-t0:.1f} s)')
                for p in probs: print(f'       - {p}')
        for src, page in manifest.get('pages', {}).items():
            if page not in results: results[page] = [f'page listed in _pages.json (from {src}) is missing']
    finally:
        if drv is not None: drv.quit()
        httpd.shutdown()
        httpd.server_close()
        shutil.rmtree(profile, ignore_errors=True)
    return results


# ---------------------------------------------------------------------------------------------------
# --self-test: a site with one broken thing of each kind; every check must fire
# ---------------------------------------------------------------------------------------------------
def _tiny_png() -> bytes:
    import struct, zlib
    def chunk(t, data): return struct.pack('>I', len(data)) + t + data + struct.pack('>I', zlib.crc32(t + data) & 0xffffffff)
    raw = b''.join(b'\x00' + b'\x1f\x5f\xa8' * 8 for _ in range(8))
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 8, 8, 8, 2, 0, 0, 0))
            + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))


def self_test() -> int:
    "Build a throwaway site from the real page template with known problems; each must be reported"
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import jinja2
    import build_site
    tmp = Path(tempfile.mkdtemp(prefix='check_site_selftest_'))
    try:
        shutil.copytree(build_site.ensure_mathjax(), tmp/'_mathjax')
        (tmp/'_static').mkdir()
        shutil.copy2(build_site.ASSETS/'site.css', tmp/'_static'/'site.css')
        (tmp/'_static'/'pygments.css').write_text('')
        (tmp/'img.png').write_bytes(_tiny_png())
        tpl = jinja2.Environment(loader=jinja2.FileSystemLoader(str(build_site.ASSETS))).get_template('page.html.j2')
        def page(name, body, root=''):
            out = tpl.render(root=root, page_title=name, site_title='selftest', site_description='', description_text='',
                             title_html=name, description_html='', sidebar_html=f'<ul><li><a href="{root}index.html">Home</a></li></ul>',
                             body=body, toc_html='', extra_css=[], repo_url='', source_path=name)
            (tmp/name).parent.mkdir(parents=True, exist_ok=True)
            (tmp/name).write_text(out, encoding='utf-8')
        page('index.html', '<h2 id="sec">Good</h2><p>Inline $\\alpha^2$ and display $$\\int_0^1 x\\,dx$$ and \\(\\beta\\).</p>'
             '<img src="img.png" alt="ok"><p><a href="bad.html">bad</a> <a href="#sec">here</a> '
             '<a href="sub/deep.html#deep">deep</a> <a href="https://example.org/x">external</a></p>'
             '<pre><code>print("$$ \\\\( not math in code")</code></pre>')
        page('sub/deep.html', '<h2 id="deep">Deep</h2><p>$x_1$ <a href="../index.html#sec">up</a></p>', root='../')
        page('bad.html',
             '<p>Unknown macro $\\notamacro{x}$.</p><p>Double exponent $x^2^3$.</p>'
             '<p class="tex2jax_ignore">Left as text: $\\beta + 1$.</p>'
             '<img src="missing.png" alt="missing">'
             '<p><a href="nowhere.html">broken</a> <a href="index.html#no-such-anchor">bad anchor</a></p>'
             '<div class="output_subarea output_text output_error"><pre>Traceback (most recent call last):\n'
             '  File "x.py", line 1\nValueError: boom</pre></div>'
             '<script>throw new Error("selftest boom")</script>')
        page('nomathjax.html', '<p>Math $\\gamma_t$ but the MathJax script is broken.</p>')
        t = (tmp/'nomathjax.html').read_text().replace('_mathjax/tex-chtml-full.js', '_mathjax/missing.js')
        (tmp/'nomathjax.html').write_text(t)
        res = check_site(tmp, shots=None, quiet=True)
        expect = {
            'bad.html': ['TeX error (undefined macro or error node): \\notamacro', 'TeX error (mjx-merror)', 'TeX left untypeset', 'image does not load: missing.png',
                         'broken link: nowhere.html', 'broken anchor: index.html#no-such-anchor',
                         'page shows a Python traceback', 'error output:', 'console error', 'HTTP 404 for /missing.png'],
            'nomathjax.html': ['MathJax did not load', 'TeX left untypeset', 'no mjx-container', 'HTTP 404 for /_mathjax/missing.js'],
        }
        failures = []
        for pg, needles in expect.items():
            for n in needles:
                if not any(n in p for p in res.get(pg, [])): failures.append(f'{pg}: expected a problem containing {n!r}')
        for pg in ('index.html', 'sub/deep.html'):
            if res.get(pg): failures.append(f'{pg}: expected no problems, got {res[pg]}')
        for pg, probs in sorted(res.items()):
            print(f'{pg}: {len(probs)} problem(s)')
            for p in probs: print(f'   - {p}')
        if failures:
            print('SELF-TEST FAILED:\n  ' + '\n  '.join(failures))
            return 1
        print(f'self-test passed: every planted problem was reported, the clean pages passed ({tmp} removed)')
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('site', nargs='?', default='_site_offline', help='site folder (default: _site_offline)')
    ap.add_argument('--shots', default=None, help='screenshot folder (default: SITE/_screenshots)')
    ap.add_argument('--all-shots', action='store_true', help='screenshot every page, not only index and 01_forward')
    ap.add_argument('--self-test', action='store_true', help='check a planted broken site: every check must fire')
    a = ap.parse_args(argv)
    if a.self_test: return self_test()
    site = Path(a.site)
    if not site.is_dir(): raise SystemExit(f'check_site.py: {site} is not a folder: build it with tools/build_site.py')
    shots = Path(a.shots) if a.shots else site/'_screenshots'
    t0 = time.time()
    res = check_site(site, shots, a.all_shots)
    n = sum(len(p) for p in res.values())
    print(f'{len(res)} pages checked, {n} problems ({time.time()-t0:.1f} s); screenshots in {shots}')
    return 1 if n else 0


if __name__ == '__main__':
    sys.exit(main())
