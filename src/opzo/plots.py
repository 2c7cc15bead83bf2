"""PNG plots of run folders: learning curves, gradient alignment and gradient variance.

``opzo plot RUN [RUN ...] --out FILE.png`` draws, for every run given, the test accuracy per
epoch; runs trained with ``--diagnostics`` add the per-layer cosine similarity with the
reference gradient over training (OPZO paper Fig. 4) and the per-layer gradient variance per
epoch on a log scale (Fig. 2). Needs matplotlib (``pip install "opzo[plot]"``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def _shown(path: Path | str) -> str:
    """A path as text that can be drawn and printed: bytes of a file name that are not
    UTF-8 (kept by Python as surrogates) become U+FFFD."""
    return os.fsencode(path).decode("utf-8", "replace")


def _read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines file; a torn last line (a killed append) is left out, any
    other unreadable line is a ValueError naming the file and the line."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{_shown(path)}, line {i + 1}: not a JSON row") from None
    return rows


def _label(run: Path) -> str:
    cfg_path = run / "config.json"
    if cfg_path.is_file():
        try:
            cfg = json.loads(cfg_path.read_text())
        except ValueError as exc:
            raise ValueError(f"{_shown(cfg_path)} is not valid JSON ({exc})") from None
        if not isinstance(cfg, dict):
            raise ValueError(f"{_shown(cfg_path)} holds no run options (not a JSON object)")
        method = str(cfg.get("method"))
        if cfg.get("local_learning"):
            method += "+LL"
        if cfg.get("igl_layer") is not None:
            method += f"+IGL{cfg['igl_layer']}"
        return f"{method} ({_shown(run.name)})"
    return _shown(run.name)


def plot_runs(runs: list[str | Path], out: str | Path) -> Path:
    """Draw the runs' curves into one PNG file and return its path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        raise RuntimeError(
            "plotting needs matplotlib: pip install 'opzo[plot]' (or pip install matplotlib)"
        ) from None
    paths = [Path(r) for r in runs]
    for p in paths:
        if not (p / "metrics.jsonl").is_file():
            raise FileNotFoundError(f"{_shown(p / 'metrics.jsonl')} not found: pass run "
                                    "folders written by 'opzo train'")
        rows = _read_jsonl(p / "metrics.jsonl")
        if not rows:
            raise ValueError(f"{_shown(p / 'metrics.jsonl')} holds no finished epoch yet: "
                             "nothing to plot")
        if not all(isinstance(r, dict) and "epoch" in r and "test_acc" in r for r in rows):
            raise ValueError(f"{_shown(p / 'metrics.jsonl')} has rows without 'epoch' and "
                             "'test_acc': is it a run folder's metrics.jsonl?")
    diag = {p: _read_jsonl(p / "diagnostics.jsonl") for p in paths}
    has_diag = any(diag.values())
    ncols = 3 if has_diag else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5.5 * ncols, 4), squeeze=False)
    ax = axes[0][0]
    for p in paths:
        rows = _read_jsonl(p / "metrics.jsonl")
        ax.plot([r["epoch"] for r in rows], [r["test_acc"] for r in rows], marker=".",
                label=_label(p))
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)  # epochs are whole numbers
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if has_diag:
        # one colour per run (as in the accuracy panel), one line style per layer
        from matplotlib.lines import Line2D

        ax_cos, ax_var = axes[0][1], axes[0][2]
        colours = [line.get_color() for line in ax.get_lines()]
        styles = ["-", "--", ":", "-."]
        layers: list[str] = []
        for p, colour in zip(paths, colours):
            rows = diag[p]
            cos = [r for r in rows if "cosine" in r]
            var = [r for r in rows if "variance" in r]
            names = list(cos[0]["cosine"]) if cos else list(var[0]["variance"]) if var else []
            for layer in names:
                if layer not in layers:
                    layers.append(layer)
            if cos:
                n_batches = max(r["batch"] for r in cos) + 1
                x = [r["epoch"] - 1 + r["batch"] / n_batches for r in cos]
                for layer in cos[0]["cosine"]:
                    ax_cos.plot(x, [r["cosine"][layer] for r in cos], color=colour,
                                linestyle=styles[layers.index(layer) % len(styles)])
            if var:
                for layer in var[0]["variance"]:
                    ax_var.semilogy([r["epoch"] for r in var],
                                    [r["variance"][layer] for r in var], marker=".",
                                    color=colour,
                                    linestyle=styles[layers.index(layer) % len(styles)])
        layer_keys = [Line2D([], [], color="0.3", linestyle=styles[i % len(styles)],
                             label=name.removesuffix(".weight"))
                      for i, name in enumerate(layers)]
        ax_cos.set_xlabel("epoch")
        ax_cos.set_ylabel("cosine similarity")
        ax_cos.set_title("alignment with the reference gradient")
        ax_cos.set_ylim(-0.2, 1.05)
        ax_cos.grid(alpha=0.3)
        ax_cos.legend(handles=layer_keys, fontsize=8, title="layer", title_fontsize=8)
        ax_var.set_xlabel("epoch")
        ax_var.set_ylabel("gradient variance")
        ax_var.set_title("per-layer gradient variance")
        ax_var.grid(alpha=0.3)
        ax_var.legend(handles=layer_keys, fontsize=8, title="layer", title_fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # drawn beside, then renamed: an interrupted plot leaves no partial file at ``out``
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        fig.savefig(tmp, dpi=120, format=out.suffix.lstrip(".").lower() or "png")
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return out
