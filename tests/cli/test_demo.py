"""The pieces of ``actstore demo`` that a run is too slow to test whole: the closing summary
(held-out FVU, labelled apart from the last batch's), where the input text goes, and that the
analysis asks ablation for the latents the report gives pages (the real selection is tested
in tests/analysis/test_report.py)."""

from __future__ import annotations

from pathlib import Path

from actstore import demo


def _summary(eval_fvu=0.2125, eval_rows=5000) -> dict:
    stage = {"seconds": 1.0, "bytes_on_disk": 2e6}
    return {
        "hook": "model.layers.15",
        "total_seconds": 10.0,
        "stages": {
            "model": {"seconds": 1.0, "converted": False},
            "capture": {**stage, "rows": 100_000, "tokens_per_s": 900.0},
            "train": {
                **stage,
                "tokens": 200_000,
                "latents": 2048,
                "k": 32,
                "fvu": 0.186,
                "eval_fvu": eval_fvu,
                "eval_rows": eval_rows,
            },
            "analyze": {**stage, "rows": 100_000, "jobs": ["stats", "ablation"], "ablation_latents": 64},
        },
        "paths": {"data": "out/demo_data/pydoc_topics.jsonl", "store": "out/store", "sae": "s", "analysis": "a"},
    }


def test_summary_prints_the_held_out_fvu_and_labels_the_last_batch():
    text = demo.format_summary(_summary())
    train = next(ln for ln in text.splitlines() if ln.strip().startswith("train"))
    assert "held-out FVU 0.2125 on 5,000 rows" in train and "last training batch: 0.186" in train
    assert train.index("held-out") < train.index("last training batch")  # the figure to quote comes first
    train = next(ln for ln in demo.format_summary(_summary(None, None)).splitlines() if "train " in ln)
    assert "FVU 0.186 on the last training batch (no held-out rows)" in train


def test_summary_names_the_text_and_the_ablated_latents():
    text = demo.format_summary(_summary())
    assert "text      out/demo_data/pydoc_topics.jsonl" in text
    assert "(ablation: the 64 latents with report pages)" in text


def test_the_text_goes_beside_the_store_not_into_the_working_directory(tmp_path):
    got = Path(demo.default_data(tmp_path / "runs" / "store"))
    assert got == tmp_path / "runs" / "demo_data" / "pydoc_topics.jsonl"
    assert Path(demo.default_data("demo_store")) == Path("demo_data/pydoc_topics.jsonl")  # make clean's folder


def test_smollm2_demo_runs_ablation_on_the_report_pages(monkeypatch, tmp_path):
    """Up to the analysis, with every stage stubbed: the text lands beside --out, and ablation
    asks for the ``report_pages`` busiest latents (what the report's pages are)."""
    seen = {}

    class Stop(Exception):
        pass

    def analysis_run(store, sae, jobs, out, **kw):
        seen["jobs"] = jobs
        raise Stop

    monkeypatch.setattr(demo, "smollm2_path", lambda: tmp_path / "model")
    monkeypatch.setattr(demo, "capture", lambda *a, **kw: {"committed_rows": 1, "rows_this_run": 1, "tokens_per_s": 1})
    monkeypatch.setattr(demo, "train", lambda **kw: {"final": {"fvu": 0.2}, "eval": {}, "tokens": 1, "steps": 1})
    monkeypatch.setattr(demo.analysis, "run", analysis_run)
    out = tmp_path / "d" / "store"
    try:
        demo.run_smollm2_demo(str(out), str(tmp_path / "d" / "sae"), str(tmp_path / "d" / "an"), report_pages=7)
    except Stop:
        pass
    assert seen["jobs"]["ablation"] == {"busiest": 7}
    assert (tmp_path / "d" / "demo_data" / "pydoc_topics.jsonl").is_file()
