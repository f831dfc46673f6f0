"""The HTML report (``actstore.analysis.report``): rendered from the planted analysis and
checked structurally with ``html.parser`` (every latent linked, the numbers are the Zarr
arrays', token text escaped), with a model (lens tables, ablation rows), through the CLI,
and in a real headless browser (Debian's chromium: the table sorts on load, links resolve)."""

from __future__ import annotations

import json
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch

import actstore
import actstore.analysis as an
from actstore.analysis import AnalysisError
from actstore.analysis.report import render
from actstore.sae import ReLUSAE, SAEConfig, save
from helpers import zygote
from helpers.analysis_store import BLOCK, relu_sae
from helpers.paths import ROOT

SCRIPT = 7  # the token id the tokenizer below decodes as "<script>"


class WordTokenizer:
    """Token i -> " w{i}", and SCRIPT -> "<script>": what escaping must survive."""

    def decode(self, ids):
        return "<script>" if ids[0] == SCRIPT else f" w{ids[0]}"


class Page(HTMLParser):
    """The parts of a report page the tests read: elements with their attributes and text."""

    def __init__(self, path: Path):
        super().__init__()
        self.els, self.stack, self.text, self.scripts = [], [], [], 0
        self.feed(path.read_text(encoding="utf-8"))

    def handle_starttag(self, tag, attrs):
        el = {"tag": tag, "attrs": dict(attrs), "text": "", "parents": [e["attrs"] for e in self.stack]}
        self.els.append(el)
        self.scripts += tag == "script"
        if tag not in ("meta", "input", "line", "br"):
            self.stack.append(el)

    def handle_endtag(self, tag):
        while self.stack:
            if self.stack.pop()["tag"] == tag:
                break

    def handle_data(self, data):
        self.text.append(data)
        for el in self.stack:
            el["text"] += data

    def find(self, tag=None, **attrs):
        return [
            e
            for e in self.els
            if (tag is None or e["tag"] == tag)
            and all(e["attrs"].get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]

    def within(self, els, **attrs):
        """Those of ``els`` that sit inside an element with ``attrs``."""
        return [e for e in els if any(all(p.get(k) == v for k, v in attrs.items()) for p in e["parents"])]

    def links(self):
        return [e["attrs"]["href"] for e in self.els if e["tag"] == "a"]


@pytest.fixture(scope="module")
def report(full, tmp_path_factory):
    a = full[0]
    index = render(a.path, tmp_path_factory.mktemp("r") / "report", tokenizer=WordTokenizer())
    return a, index


def _page(index: Path, i: int) -> Path:
    return index.parent / "latents" / f"{i:05d}.html"


def test_index_links_every_latent_and_shows_the_arrays(report):
    a, index = report
    page = Page(index)
    rows = page.find("tr")[1:]
    assert [int(r["attrs"]["data-latent"]) for r in rows] == list(range(a.m))
    for i in range(a.m):
        assert f"latents/{i:05d}.html" in page.links() and _page(index, i).is_file()
    for key in ("density", "count", "max", "mean"):
        cells = page.find("td", data_key=key)
        got = np.array([float(c["attrs"]["data-v"]) for c in cells])
        assert np.array_equal(got, a.array(f"latents/{key}").astype(np.float64)), key
    dead = [int(r["attrs"]["data-latent"]) for r in rows if r["attrs"].get("data-dead")]
    assert dead == np.flatnonzero(a.array("latents/dead")).tolist() == [0]
    badges = page.find("span", **{"class": "badge dense"})
    assert len(badges) == int(a.array("latents/dense").sum())
    tt = a.array("top_tokens/tokens")
    first = [e["text"] for e in page.within(page.find("span", **{"class": "tk"}), **{"data-latent": "1"})]
    assert first == [WordTokenizer().decode([t]) for t in tt[1] if t >= 0][:5]
    assert len(page.find("svg")) == 1 and len(page.find("rect")) == a.array("summary/log_density_hist").size


def test_latent_page_shows_its_examples_and_bins(report):
    a, index = report
    lat = int(np.argmax(a.array("latents/count")))
    page = Page(_page(index, lat))
    stats = {e["attrs"]["data-stat"]: e["attrs"]["data-v"] for e in page.find("td") if "data-stat" in e["attrs"]}
    assert int(stats["fires on rows"]) == a.array("latents/count")[lat]
    assert float(stats["max"]) == float(a.array("latents/max")[lat])
    assert float(stats["mean (when firing)"]) == a.array("latents/mean")[lat]
    # Top examples first, in order, each with its window and exactly one boxed token.
    top = page.within(page.find("div", **{"class": "ctx"}), id="top")
    assert [int(e["attrs"]["data-row"]) for e in top] == [r for _, r in a[lat].top]
    assert [float(e["attrs"]["data-v"]) for e in top] == [v for v, _ in a[lat].top]
    ctx = a.array("contexts/top/acts")[lat]
    toks = a.array("contexts/top/tokens")[lat]
    for k, e in enumerate(top):
        spans = page.within(page.within(page.find("span"), id="top"), **{"data-row": e["attrs"]["data-row"]})
        spans = [s for s in spans if s["attrs"].get("class") in ("t", "t ex")]
        boxed = [s for s in spans if s["attrs"]["class"] == "t ex"]
        assert len(boxed) == 1 and boxed[0]["text"] == WordTokenizer().decode([toks[k, 3]])
        shown = [float(s["attrs"]["title"].split()[0]) for s in spans]
        assert shown == pytest.approx(ctx[k][toks[k] >= 0], rel=1e-3)
        # Colour: a silent token has no style at all, a firing one its share of the max.
        alpha = [float(s["attrs"].get("style", "--a:0").removeprefix("--a:")) for s in spans]
        want = np.clip(ctx[k][toks[k] >= 0] / float(a.array("latents/max")[lat]), 0, 1)
        assert alpha == pytest.approx(want, abs=1e-3)
        assert all(("style" in s["attrs"]) == (v > 0) for s, v in zip(spans, alpha))
    # Then every non-empty bin of every mode, as INTERVAL a-b CONTAINS p%.
    text = "".join(page.text)
    for mode in ("equal", "abs", "quantile"):
        cnt = a.array(f"bins/{mode}/count")[lat]
        heads = page.within(page.find("div", **{"class": "interval"}), id=f"bins-{mode}")
        assert [int(h["attrs"]["data-count"]) for h in heads] == [int(c) for c in cnt if c > 0]
        for h, c in zip(heads, cnt[cnt > 0]):
            assert h["text"].startswith("INTERVAL ") and f"CONTAINS {100 * c / cnt.sum():.3g}%" in h["text"]
    assert text.index("Top activations") < text.index("INTERVAL")


def test_token_text_is_escaped(report):
    a, index = report
    raw = index.read_text(encoding="utf-8")
    assert "&lt;script&gt;" in raw and Page(index).scripts == 1  # only the report's own table script
    for i in range(a.m):
        page = Page(_page(index, i))
        assert page.scripts == 0
    tok = a.array("contexts/top/tokens")
    lat = int(np.flatnonzero((tok == SCRIPT).any(axis=(1, 2)))[0])
    page = Page(_page(index, lat))
    assert page.scripts == 0 and "<script>" in "".join(page.text)  # shown as text


def test_without_a_tokenizer_tokens_are_ids(full, tmp_path):
    a = full[0]
    index = render(a.path, tmp_path / "r")
    page = Page(index)
    tt = a.array("top_tokens/tokens")[1]
    shown = [e["text"] for e in page.within(page.find("span", **{"class": "tk"}), **{"data-latent": "1"})]
    assert shown == [f"[{t}]" for t in tt[tt >= 0]][:5]
    assert "tokens shown as ids" in "".join(page.text)


def test_a_report_folder_of_another_analysis_is_refused(full, planted, tmp_path):
    a = full[0]
    render(a.path, tmp_path / "r")
    again = render(a.path, tmp_path / "r")  # the same analysis: rendered again in place
    assert again.is_file()
    other = an.run(planted[0], relu_sae(), {"stats": {}}, tmp_path / "other", block_rows=BLOCK)
    with pytest.raises(AnalysisError, match="report of a different analysis"):
        render(other, tmp_path / "r")
    assert Page(again).find("tr")  # left as it was
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(AnalysisError, match="holds no actstore report"):
        render(a.path, tmp_path / "mine")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "other", "r"]  # no build folder left


@pytest.mark.parametrize("job", ["stats", "top", "bins", "top_tokens"])
def test_an_analysis_of_one_job_renders(planted, tmp_path, job):
    out = an.run(planted[0], relu_sae(), {job: {}}, tmp_path / "o", block_rows=BLOCK)
    index = render(out)
    a = an.open(out)
    assert len(Page(index).find("tr", data_latent="3")) == 1
    page = Page(_page(index, 3))
    if job == "top":
        top = page.within(page.find("div", **{"class": "ctx"}), id="top")
        assert [int(e["attrs"]["data-row"]) for e in top] == [r for _, r in a[3].top]
    if job == "bins":
        assert "INTERVAL" in "".join(page.text)


def _llama_store(d: Path, m: int = 6):
    """A tiny Llama, a store of its layer-0 outputs at ``d / "s"`` and a ReLU SAE of ``m`` latents over them."""
    from test_ablation import HOOK, VOCAB, layer0, llama

    model = llama()
    g = np.random.default_rng(3)
    docs = [g.integers(0, VOCAB, int(g.integers(4, 14))).tolist() for _ in range(8)]
    with actstore.create(d / "s", {HOOK: 16}, segment="a", dtype="fp32", codec="none") as w:
        for i, doc in enumerate(docs):
            n = len(doc)
            w.append({HOOK: layer0(model, doc)}, tokens=np.array(doc, np.int32), doc=np.full(n, i, np.int64),
                     pos=np.arange(n, dtype=np.int32), flags=np.zeros(n, np.uint8))  # fmt: skip
    sae = ReLUSAE(SAEConfig("relu", 16, m, hook=HOOK), seed=1)
    with torch.no_grad():
        sae.W_enc.mul_(3.0)
    return model, sae


@pytest.fixture(scope="module")
def with_model(tmp_path_factory):
    """A tiny Llama, a store of its layer-0 outputs, and lens + ablation over it."""
    d = tmp_path_factory.mktemp("m")
    model, sae = _llama_store(d)
    jobs = {"stats": {}, "top": {"k": 3}, "contexts": {"window": 2}, "lens": {"t": 4}, "ablation": {"examples": 2}}
    out = an.run(d / "s", sae, jobs, d / "o", model=model, block_rows=16)
    return an.open(out), render(out, tokenizer=WordTokenizer())


def test_lens_tables_and_ablation_rows(with_model):
    a, index = with_model
    assert index == a.path / "report" / "index.html"
    lat = int(np.argmax(a.array("latents/count")))
    page = Page(_page(index, lat))
    for side in ("top", "bottom"):
        vals = [
            float(e["attrs"]["data-v"])
            for e in page.within(page.find("td"), id=f"lens-{side}")
            if "data-v" in e["attrs"]
        ]
        assert vals == a.array(f"lens/{side}_values")[lat].astype(np.float64).tolist()
        toks = [e["text"] for e in page.within(page.find("span", **{"class": "tk"}), id=f"lens-{side}")]
        assert toks == [WordTokenizer().decode([t]) for t in a.array(f"lens/{side}_ids")[lat]]
    ab = page.within(page.find("div", **{"class": "ctx"}), id="ablation")
    rows = a.array("ablation/rows")[lat]
    assert [int(e["attrs"]["data-row"]) for e in ab] == rows[rows >= 0].tolist()
    index_page = Page(index)
    shown = [e["text"] for e in index_page.within(index_page.find("span", **{"class": "tk"}), **{"data-latent": "2"})]
    assert shown == [WordTokenizer().decode([t]) for t in a.array("lens/top_ids")[2]]


def test_ablation_of_the_busiest_latents_is_on_their_pages_and_the_index(tmp_path):
    """ablation.busiest=n runs on the latents that render(pages=n) gives pages, the index lists
    each with its top example's ablation line and a link, and names the model by its own name."""
    model, sae = _llama_store(tmp_path, m=12)
    model.name_or_path = "org/tiny-llama"  # what from_pretrained sets (load_smollm2: the hub name)
    jobs = {"stats": {}, "top": {"k": 3}, "ablation": {"examples": 2, "busiest": 4}}
    a = an.open(an.run(tmp_path / "s", sae, jobs, tmp_path / "o", model=model, block_rows=16))
    index = render(a.path, tokenizer=WordTokenizer(), pages=4)
    paged = sorted(int(p.stem) for p in (index.parent / "latents").glob("*.html"))
    count = np.asarray(a.array("latents/count"))
    assert len(paged) == 4 and paged != list(range(4)) and (count[paged] > 0).all()  # not simply the first ids
    ablated = np.flatnonzero((np.asarray(a.array("ablation/rows")) >= 0).any(axis=1)).tolist()
    assert ablated == paged
    page = Page(index)
    rows = [e for e in page.find("tr") if "data-ablated" in e["attrs"]]
    assert [int(r["attrs"]["data-ablated"]) for r in rows] == ablated
    links = [e["attrs"]["href"] for e in page.within(page.find("a"), id="ablation-table")]
    assert links == [f"latents/{i:05d}.html" for i in ablated]
    lines = page.within(page.find("div", **{"class": "ctx"}), id="ablation-table")
    assert [int(e["attrs"]["data-row"]) for e in lines] == [int(a.array("ablation/rows")[i, 0]) for i in ablated]
    (model_el,) = page.find("b", id="model")
    assert model_el["text"] == "org/tiny-llama" and model_el["attrs"]["title"] == "LlamaForCausalLM"
    with pytest.raises(AnalysisError, match="add stats"):
        an.run(tmp_path / "s", sae, {"top": {}, "ablation": {"busiest": 4}}, tmp_path / "p", model=model)


def _cli(*args):
    return zygote.run([sys.executable, "-m", "actstore.cli", *map(str, args)], capture_output=True, text=True, cwd=ROOT)


def _word_tokenizer_folder(path: Path) -> Path:
    """A real Hugging Face tokenizer folder (word level, ids 0..49, 7 = "<script>")."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    vocab = {("<script>" if i == SCRIPT else f"w{i}"): i for i in range(50)}
    t = Tokenizer(WordLevel(vocab, unk_token="w0"))
    t.pre_tokenizer = Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=t).save_pretrained(path)
    return path


@pytest.mark.slow  # over ~15 s on 2 busy cores (subprocesses or compiles): scheduled first
def test_cli_analyze_html_and_report(planted, tmp_path):
    path, _ = planted
    save(relu_sae(), tmp_path / "sae")
    tok = _word_tokenizer_folder(tmp_path / "tok")
    r = _cli("analyze", "--store", path, "--sae", tmp_path / "sae", "--jobs", "stats,top,contexts,top_tokens",
             "--block-rows", BLOCK, "--out", tmp_path / "o", "--html", "--tokenizer", tok, "--json",
             "--no-progress")  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    index = Path(doc["report"])
    assert index == tmp_path / "o" / "report" / "index.html" and index.is_file()
    raw = index.read_text(encoding="utf-8")
    assert "&lt;script&gt;" in raw and "tokens decoded" in raw
    r = _cli("report", tmp_path / "o", "--out", tmp_path / "again")
    assert r.returncode == 0 and r.stdout.strip() == str(tmp_path / "again" / "index.html"), r.stderr
    assert "tokens shown as ids" in (tmp_path / "again" / "index.html").read_text()  # the analysis has no model
    r = _cli("report", tmp_path / "nothing")
    assert r.returncode == 1 and r.stderr.strip().startswith("actstore: no finished analysis at"), r.stderr
    r = _cli("report", tmp_path / "o", "--tokenizer", tmp_path / "nope")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "is not a folder" in r.stderr


CHROMIUM = shutil.which("chromium")


def _dump(url: str, *flags: str) -> Page:
    out = zygote.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", *flags, "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    p = Path(urlsplit(url).path).with_suffix(".dom.html")
    p.write_text(out.stdout, encoding="utf-8")
    return Page(p)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_in_a_headless_browser_the_table_sorts_and_links_work(full, tmp_path):
    a = full[0]
    index = render(a.path, tmp_path / "r", tokenizer=WordTokenizer())
    dens = a.array("latents/density")
    for query, want in (
        ("?sort=-density", np.lexsort((np.arange(a.m), -dens))),
        ("#sort=max", np.lexsort((np.arange(a.m), a.array("latents/max")))),
        ("?sort=latent", np.arange(a.m)),
    ):
        dom = _dump(index.as_uri() + query)
        rows = [int(r["attrs"]["data-latent"]) for r in dom.find("tr") if "data-latent" in r["attrs"]]
        assert rows == want.tolist(), query
    dom = _dump(index.as_uri() + "?hide=dead&sort=-count")
    hidden = [int(r["attrs"]["data-latent"]) for r in dom.find("tr") if "display: none" in r["attrs"].get("style", "")]
    assert hidden == [0] and f"{a.m - 1} of {a.m} shown" in "".join(dom.text)
    dom = _dump(index.as_uri() + "?q=w3")  # a token text: only the rows showing it
    shown = [r for r in dom.find("tr") if "data-latent" in r["attrs"] and "display" not in r["attrs"].get("style", "")]
    assert shown and all(" w3" in r["text"] for r in shown)
    lat = int(np.argmax(a.array("latents/count")))
    page = _dump(_page(index, lat).as_uri())
    assert page.within(page.find("div", **{"class": "ctx"}), id="top") and page.find("svg")
    for base, links in ((index, Page(index).links()), (_page(index, lat), page.links())):
        for href in links:
            assert (base.parent / href).resolve().is_file(), href


class LongTokenizer:
    """Tokens of 32 characters: five of them side by side are wider than the page."""

    def decode(self, ids):
        return f" token_{ids[0]:03d}_" + "x" * 21


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_in_a_1400px_window_the_index_needs_no_horizontal_scrollbar(full, tmp_path):
    index = render(full[0].path, tmp_path / "r", tokenizer=LongTokenizer())
    # The page measures itself once laid out, into an attribute that --dump-dom shows.
    measure = (
        "<script>var e = document.documentElement, t = document.getElementById('latents');"
        "document.body.setAttribute('data-overflow', e.scrollWidth - e.clientWidth);"
        "document.body.setAttribute('data-table', Math.round(t.getBoundingClientRect().width));</script>"
    )
    probe = index.with_name("probe.html")
    probe.write_text(index.read_text(encoding="utf-8").replace("</body>", measure + "</body>"), encoding="utf-8")
    (body,) = _dump(probe.as_uri(), "--window-size=1400,900").find("body")
    assert int(body["attrs"]["data-overflow"]) <= 0 and 0 < int(body["attrs"]["data-table"]) <= 1400
    tokens = [e for e in Page(index).find("span", **{"class": "tk"}) if e["text"].startswith(" token_")]
    assert len(tokens) > 10  # the long tokens are there, wrapped, not dropped


def test_pages_limit_links_only_the_rendered_latents(full, tmp_path):
    a = full[0]
    out = a.path
    index = render(out, tmp_path / "rep", pages=3)
    count = np.asarray(a.array("latents/count"))
    want = sorted(np.argsort(-count, kind="stable")[:3].tolist())
    pages = sorted(int(p.stem) for p in (index.parent / "latents").glob("*.html"))
    assert pages == want
    html = index.read_text()
    linked = sorted(int(h.split("/")[-1].split(".")[0]) for h in re.findall(r'href="(latents/\d+\.html)"', html))
    assert linked == want
    for p in (index.parent / "latents").glob("*.html"):  # prev/next stay inside the rendered pages
        for h in re.findall(r'href="(\d+\.html)"', p.read_text()):
            assert (p.parent / h).exists()
    gap = render(out, tmp_path / "gap", pages=[1, 5]).parent / "latents"
    (nxt,) = [e for e in Page(gap / "00001.html").find("a") if e["attrs"]["href"] == "00005.html"]
    (prev,) = [e for e in Page(gap / "00005.html").find("a") if e["attrs"]["href"] == "00001.html"]
    assert (nxt["text"], prev["text"]) == ("latent 5 ›", "‹ latent 1")  # the pages they lead to, not i ± 1
    with pytest.raises(AnalysisError, match="no latent"):
        render(out, tmp_path / "bad", pages=[a.m])
