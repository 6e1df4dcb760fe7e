"""`s2gr report RUN`: one self-contained HTML page about a trained run (GitHub #10) -> RUN/report.html.

Sections: final metrics; training curves per loss term and validation metrics per epoch (metrics.json
"history"); codebook usage per level (tokenizer report / the SID table); the coarse-cluster labels (what each
thinking target means, labels.py); example test users with their history, recommendations and reasoning path.
Plots are matplotlib (Agg, no pyplot state) PNGs embedded as base64, so the file opens anywhere offline.
A section that cannot be built shows a ``<div class="error">`` with the reason instead of failing the page.
"""
from __future__ import annotations

import base64
import html
import io
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow.parquet as pq

from s2gr_ray import artifacts

LOSS_TERMS = ("loss", "rec", "align", "infonce", "reg")
_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f4f4f4}img.plot{max-width:100%;border:1px solid #eee}
.hit{background:#d9f7d9;font-weight:bold}.muted{color:#777}.error{color:#b00;border:1px solid #b00;padding:.5em}
.user{border:1px solid #ddd;padding:.6em 1em;margin:1em 0;border-radius:4px}"""
# After load, the page records how many embedded plots decoded (the headless-browser test reads it).
_SCRIPT = ('<script>window.addEventListener("load",function(){var i=[].slice.call(document.querySelectorAll('
           '"img.plot"));document.body.setAttribute("data-plots-loaded",i.filter(function(x){return x.complete&&'
           'x.naturalWidth>0}).length+"/"+i.length);});</script>')


def _e(x: Any) -> str:
    return html.escape(str(x))


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(n_panels: int, width: float = 3.6, height: float = 2.8):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * n_panels, height))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, n_panels, squeeze=False)[0]


def _img(b64: str, plot_id: str, alt: str) -> str:
    return f'<img class="plot" id="{plot_id}" alt="{_e(alt)}" src="data:image/png;base64,{b64}">'


def _table(header: list[str], rows: list[list[Any]], raw: bool = False) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c if raw else _e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------------------------------------- sections
def section_metrics(metrics: dict) -> str:
    views = artifacts.final_metric_views(metrics)
    if not views:
        return '<p class="muted">metrics.json holds no final metrics.</p>'
    keys = ["count"] + [k for k in metrics[views[0]] if "@" in k]
    rows = [[v] + [_fmt(metrics[v].get(k, "")) if k != "count" else int(metrics[v].get(k, 0)) for k in keys]
            for v in views]
    train = metrics.get("train", {})
    extra = (f"<p>best epoch {_e(train.get('best_epoch'))} of {_e(train.get('epochs'))}, {_e(train.get('steps'))} "
             f"steps, {float(train.get('seconds') or 0):.0f} s</p>") if train else ""
    return _table(["split"] + keys, rows) + extra


def section_curves(history: list[dict]) -> str:
    if not history:
        return '<p class="muted">no per-epoch history in metrics.json.</p>'
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    terms = [t for t in LOSS_TERMS if any(f"train/{t}" in h for h in history)]
    valid = sorted({k for h in history for k in h if k.startswith("valid/") and "@" in k})
    out = []
    if terms:
        fig, axes = _figure(len(terms), 3.0)
        for ax, t in zip(axes, terms):
            ax.plot(epochs, [h.get(f"train/{t}", np.nan) for h in history], marker="o")
            ax.set_title(f"train/{t}")
            ax.set_xlabel("epoch")
        fig.tight_layout()
        out.append(_img(_png(fig), "plot-train-loss", "training loss per term"))
    if valid:
        fig, axes = _figure(1, 6.0, 3.2)
        for k in valid:
            axes[0].plot(epochs, [h.get(k, np.nan) for h in history], marker="o", label=k.split("/", 1)[1])
        axes[0].set_xlabel("epoch")
        axes[0].set_title("validation metrics")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        out.append(_img(_png(fig), "plot-valid", "validation metrics per epoch"))
    return "\n".join(out) or '<p class="muted">history has no train/valid keys.</p>'


def section_codebook(tokenizer, tok_report: dict) -> str:
    levels = tok_report.get("levels") or []
    counts = [np.asarray(lv["usage"]) for lv in levels if "usage" in lv] or [
        np.bincount(tokenizer.sids[:, l], minlength=tokenizer.level_sizes[l])
        for l in range(tokenizer.num_semantic_levels)]
    fig, axes = _figure(len(counts), 3.6)
    for lvl, (ax, c) in enumerate(zip(axes, counts)):
        srt = np.sort(c)[::-1]
        ax.bar(np.arange(len(srt)), srt, width=1.0)
        ax.axhline(c.sum() / max(len(c), 1), color="red", lw=1)
        ax.set_title(f"level {lvl + 1}: {int((c > 0).sum())}/{len(c)} codes used")
        ax.set_xlabel("code (sorted by usage)")
    fig.tight_layout()
    rows = [[lv.get("level"), lv.get("codebook_size"), _fmt(lv.get("utilization")), _fmt(lv.get("perplexity")),
             _fmt(lv.get("collision_rate"))] for lv in levels]
    table = _table(["level", "codes", "utilization", "perplexity", "prefix collision rate"], rows) if rows else ""
    summary = (f"<p>collision rate before dedup {_fmt(tok_report.get('collision_rate'))}, reconstruction MSE "
               f"{_fmt(tok_report.get('reconstruction_mse'))}, SID levels {list(tokenizer.level_sizes)}</p>")
    return _img(_png(fig), "plot-codebook", "codebook usage per level") + table + summary


def section_clusters(rec) -> str:
    rows = [[f"L{lab['level']}", lab["cluster"], lab["label"], lab["num_items"], "; ".join(lab["titles"])]
            for lab in rec.label_table()]
    return ("<p>Each thinking vector of level l is read as its nearest coarse cluster; a cluster is labelled by "
            "the items whose level-l code maps to it.</p>"
            + _table(["level", "cluster", "label (category words)", "items", "representative titles"], rows))


def section_examples(rec, run: Path, num_users: int, k: int) -> str:
    from s2gr_ray.training.data_pipeline import shard_files

    table = pq.read_table(shard_files(run, "test")[0]).slice(0, num_users).to_pylist()
    recs = rec.recommend([row["history"] for row in table], k=k, id_type="item_id")
    parts = []
    for row, r in zip(table, recs):
        hist = row["history"][-8:]
        hist_html = "<br>".join(_e(t) for t in rec.item_titles(hist))
        more = f' <span class="muted">(last 8 of {row["history_len"]})</span>' if row["history_len"] > 8 else ""
        items = [[f'<span class="{"hit" if i.item_id == row["target"] else ""}">{i.rank}</span>', _e(i.raw_id),
                  _e(i.title), f"{i.score:.3f}"] for i in r.items]
        path = [[s.level, s.step, s.cluster, f"{s.similarity:.3f}", _e(s.label)] for s in r.reasoning]
        hit = any(i.item_id == row["target"] for i in r.items)
        parts.append(
            f'<div class="user" id="user-{_e(row["user_id"])}"><h3>user {_e(row["user_id"])} — target '
            f'{_e(rec.item_titles([row["target"]])[0])} {"(hit)" if hit else "(miss)"}</h3>'
            f"<p><b>history</b>{more}<br>{hist_html}</p><b>top-{k}</b>"
            + _table(["rank", "raw id", "title", "score"], items, raw=True)
            + "<b>reasoning path</b> (top-1)"
            + (_table(["level", "step", "cluster", "cosine", "label"], path, raw=True) if path else
               '<p class="muted">this model has no thinking vectors (n_think = 0 or w_align = 0).</p>') + "</div>")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------- page
def build_report(run: str | Path, num_users: int = 5, k: int = 10, out: str | Path | None = None,
                 log: Callable[[str], None] = print) -> Path:
    """Write RUN/report.html (or ``out``) and return its path."""
    from s2gr_ray.serving.api import Recommender
    from s2gr_ray.tokenizer.sid import SIDTokenizer

    run = Path(run).resolve()
    path = Path(out) if out else run / "report.html"
    if out and path.is_dir():
        raise ValueError(f"--out {path} is a folder; give the page's file name, e.g. {path / 'report.html'}")
    if out and not path.parent.is_dir():
        raise ValueError(f"--out {path}: the folder {path.parent} does not exist; create it or choose another path")
    if not run.is_dir():
        raise ValueError(f"run directory {run} does not exist (or is not a folder); pass the --out folder of a "
                         "trained run (s2gr run / s2gr train)")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; pass --out with the page's file name")
    tokenizer = SIDTokenizer.load(artifacts.tokenizer_dir(run))
    metrics = artifacts.read_json(run / "metrics.json") if (run / "metrics.json").exists() else {}
    rec = Recommender.load(run, device="cpu")
    sections: list[tuple[str, str, Callable[[], str]]] = [
        ("metrics", "Final metrics", lambda: section_metrics(metrics)),
        ("curves", "Training curves", lambda: section_curves(metrics.get("history") or [])),
        ("codebook", "Codebook usage", lambda: section_codebook(tokenizer, tokenizer.report or {})),
        ("clusters", "Coarse clusters (thinking targets)", lambda: section_clusters(rec)),
        ("examples", "Example test users", lambda: section_examples(rec, run, num_users, k)),
    ]
    body = []
    for sid, title, make in sections:
        try:
            content = make()
        except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others
            log(f"report: section {sid} failed: {type(exc).__name__}: {exc}")
            content = f'<div class="error">could not build this section: {_e(type(exc).__name__)}: {_e(exc)}</div>'
        body.append(f'<section id="{sid}"><h2>{_e(title)}</h2>\n{content}\n</section>')
    manifest = artifacts.read_json(run / "manifest.json") if (run / "manifest.json").exists() else {}
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>s2gr report: {_e(run.name)}'
            f"</title><style>{_CSS}</style>{_SCRIPT}</head><body>\n<h1>S²GR run report: {_e(run.name)}</h1>\n"
            f'<p class="muted">{_e(run)} — {_e(manifest.get("source", ""))}, '
            f'{_e(manifest.get("num_items", "?"))} items, {_e(manifest.get("num_users", "?"))} users — '
            f'generated {time.strftime("%Y-%m-%d %H:%M:%S")}</p>\n'
            + "\n".join(body) + "\n</body></html>\n")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log(f"report: wrote {path} ({len(page) / 1024:.0f} KiB)")
    return path
