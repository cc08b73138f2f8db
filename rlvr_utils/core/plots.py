"""Seaborn figure helpers shared by the notebooks: one style, and every figure saved under the run."""
from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns

sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
STAGE_COLORS = {"base": "#7f7f7f", "sft": "#1f77b4", "rlvr": "#d62728"}

# The page a figure is made for. A figure is shown at most as wide as the book's text column, 688 px at a 1280 px
# window and 368 px at a 400 px phone (measured: tests/page_audit.py); text of `pt` points in a figure `w` inches
# wide then renders at pt * 368 / (72 * w) px on a phone. At PAGE_WIDTH inches and MIN_FONT points that is 8.4 px,
# above the 8 px the browser test asks for. Figure helpers draw panels in a grid of at most COLUMNS per row.
PAGE_WIDTH, MIN_FONT, COLUMNS = 6.4, 10.5, 2
DPI = 120
# PNG text chunks that plots.save writes and the book's browser test reads (tests/page_audit.py)
MIN_FONT_KEY, EMPTY_KEY = "rlvr:min_font_px", "rlvr:empty_panels"
# output metadata that plots.save sets and rlvr_utils.publish.clean turns into a numbered, labelled figure
CAPTION_KEY, FIGURE_KEY = "caption", "rlvr:figure"


def label(name: str) -> str:
    """The book's label of the figure saved as `name`: the chapter's prose refers to it as
    {numref}`fig-05-cka-components` (`05_cka_components`), whatever else the chapter draws."""
    return "fig-" + name.replace("_", "-")


def grid(n: int, columns: int = COLUMNS) -> tuple[int, int]:
    """(rows, columns) of a grid of n panels that fits the page."""
    columns = max(1, min(columns, n))
    return max(1, -(-n // columns)), columns


def drop_unused(axes, used: int) -> None:
    """Remove the cells of a grid that hold no panel (a grid of 5 panels has a sixth cell)."""
    for ax in list(axes.flat)[used:]:
        ax.remove()


def say_missing(ax, text: str) -> None:
    """A panel with nothing measured says so in words instead of showing empty axes or zeros."""
    ax.set(xticks=[], yticks=[])
    ax.grid(False)
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=ax.transAxes, color="0.35")


def text_sizes(fig: plt.Figure) -> list[float]:
    """Font sizes (points) of every visible, non-empty text the figure draws."""
    from matplotlib.text import Text

    fig.canvas.draw()  # tick labels exist only once drawn
    return [t.get_fontsize() for t in fig.findobj(Text)
            if t.get_visible() and t.get_text().strip() and (t.axes is None or t.axes.get_visible())]


def empty_panels(fig: plt.Figure) -> int:
    """Visible axes that draw nothing: no data and no words (colour bars and legends hold data)."""
    return sum(1 for ax in fig.axes if ax.get_visible() and not ax.has_data() and not ax.texts
               and not ax.get_legend())


def fit_titles(fig: plt.Figure) -> bool:
    """Wrap every title onto lines no wider than what it titles: a title wider than the figure would widen the
    saved image (bbox 'tight'), and so shrink all its text on the page."""
    import textwrap

    def wrap(text_artist, width_in: float) -> bool:
        text = text_artist.get_text()
        chars = max(12, int(width_in * 72 / (0.6 * text_artist.get_fontsize())))  # ~0.6 em per character
        if text and any(len(line) > chars for line in text.split("\n")):
            text_artist.set_text("\n".join(textwrap.fill(line, chars) for line in text.split("\n")))
            return True
        return False

    width = fig.get_size_inches()[0]
    wrapped = fig._suptitle is not None and wrap(fig._suptitle, width)
    for ax in fig.axes:
        if ax.get_visible():
            wrapped = wrap(ax.title, max(ax.get_position().width * width, 1.5)) or wrapped
    return wrapped


def save(fig: plt.Figure, cfg, name: str, caption: str | None = None) -> Path:
    """Save `fig` as runs/<run>/figures/<name>.png and, in a notebook, show that file with its caption: the
    book numbers it as a figure labelled `label(name)` (rlvr_utils.publish.clean). The caption states what the
    figure shows on this run, with its numbers (a chapter's `caption_*` functions write it from the metrics);
    it defaults to the figure's title. The PNG records its smallest text in pixels and its empty panels, which
    the book's browser test checks at the size the page renders it."""
    path = cfg.path("figures", f"{name}.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    caption = caption or figure_title(fig)  # before the titles are wrapped
    if fit_titles(fig) and not fig.get_constrained_layout():
        with warnings.catch_warnings():  # a layout it cannot improve stays as it was, and says so only here
            warnings.simplefilter("ignore")
            fig.tight_layout()
    sizes = text_sizes(fig)
    metadata = {MIN_FONT_KEY: f"{min(sizes, default=0) * DPI / 72:.2f}", EMPTY_KEY: str(empty_panels(fig))}
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata=metadata)
    _show(fig, path, caption, name)
    return path


def figure_title(fig: plt.Figure) -> str:
    """The suptitle, else the axes' titles joined."""
    if fig._suptitle is not None and fig._suptitle.get_text():
        return fig._suptitle.get_text()
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    return "; ".join(dict.fromkeys(titles))


def _show(fig: plt.Figure, path: Path, caption: str, name: str) -> None:
    """Display the saved file (so the book shows exactly it, with its metadata), with the caption in the
    output's metadata, and close the figure (the inline backend would show it a second time, without one)."""
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:
        return
    if get_ipython() is None or "IPKernelApp" not in get_ipython().config:
        return
    display(Image(data=path.read_bytes(), format="png"), metadata={CAPTION_KEY: caption, FIGURE_KEY: name})
    plt.close(fig)


def training_curves(history: list[dict], panels: dict[str, str], title: str) -> plt.Figure:
    """One panel per logged quantity (key -> panel title) against the training step."""
    import pandas as pd

    frame = pd.DataFrame([h for h in history if "step" in h])
    keys = [k for k in panels if k in frame]
    # at most two panels per row: four in one row are too short to read at the book's page width
    cols = min(2, max(1, len(keys)))
    rows = max(1, -(-len(keys) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(PAGE_WIDTH, 2.9 * rows + 0.6), squeeze=False)
    drop_unused(axes, len(keys))  # removed, not hidden: fig.axes[-1] is then the last panel drawn
    for ax, key in zip(axes.flat, keys):
        rows = frame[["step", key]].dropna().astype(float)
        sns.lineplot(data=rows, x="step", y=key, ax=ax, marker="o", markersize=3)
        ax.set(title=panels[key], xlabel="training step", ylabel="")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def trend(history: list[dict], key: str, share: float = 0.1) -> tuple[float, float, int, int] | None:
    """(start, end, first step, last step) of a logged quantity: the means of its first and last `share` of
    logged points, so that one noisy sampled batch does not stand for a whole phase of training."""
    points = [(h["step"], float(h[key])) for h in history if "step" in h and h.get(key) is not None]
    if not points:
        return None
    w = max(1, int(len(points) * share))
    mean = lambda chunk: sum(v for _, v in chunk) / len(chunk)  # noqa: E731
    return mean(points[:w]), mean(points[-w:]), points[0][0], points[-1][0]


def caption_training(history: list[dict], panels: dict[str, str], title: str, stopping: dict | None = None) -> str:
    """'<title>: <panel> from a to b …': where each logged quantity started and ended (trend); with a stopping
    record (training.train), which checkpoint was kept."""
    from rlvr_utils.core import fmt

    moves = []
    for key, what in panels.items():
        found = trend(history, key)
        if found:
            moves.append(f"{what} from {fmt.number(found[0])} to {fmt.number(found[1])}")
    steps = [h["step"] for h in history if "step" in h]
    if not moves:
        return f"{title}: nothing was logged."
    kept = ""
    if stopping and stopping.get("best_step"):
        kept = (f" Dashed line: the checkpoint kept, step {stopping['best_step']}, the best "
                f"{panels.get(stopping.get('metric'), stopping.get('metric'))} ({fmt.number(stopping['best_value'])}).")
    return (f"{title}, steps {min(steps)} to {max(steps)}: " + "; ".join(moves)
            + " (means of the first and last tenth of the logged points)." + kept)


def pass_at_k(metrics: dict) -> plt.Figure:
    """pass@k with its bootstrap interval for each stage, k on a log axis."""
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH, 4))
    for stage, by_k in metrics["pass_at_k"].items():
        ks = [int(k) for k in by_k]
        values = [by_k[k]["value"] for k in by_k]
        lo = [by_k[k]["ci"][0] for k in by_k]
        hi = [by_k[k]["ci"][1] for k in by_k]
        ax.plot(ks, values, marker="o", color=STAGE_COLORS.get(stage), label=stage)
        ax.fill_between(ks, lo, hi, color=STAGE_COLORS.get(stage), alpha=0.2)
    ax.set(xscale="log", xlabel="k (samples per problem)", ylabel="pass@k", ylim=(0, 1.02),
           title="pass@k on held-out problems (95% bootstrap CI)")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.legend(title="model", fontsize=MIN_FONT)
    return fig


def caption_pass_at_k(metrics: dict) -> str:
    """pass@k of each model at the smallest and the largest k, with intervals."""
    from rlvr_utils.core.captions import estimate

    by_stage = metrics.get("pass_at_k", {})
    ks = sorted({int(k) for by_k in by_stage.values() for k in by_k})
    if not ks:
        return "pass@k was not measured."
    parts = [f"pass@{k}: " + ", ".join(f"{stage} {estimate(by_k.get(str(k)))}" for stage, by_k in by_stage.items())
             for k in dict.fromkeys((ks[0], ks[-1]))]
    return "pass@k on held-out problems (95% bootstrap CI). " + "; ".join(parts) + "."


KIND_COLORS = {"study": STAGE_COLORS["rlvr"], "control": "#2ca02c",  # nulls and copies: grey
               "user": "#9467bd"}


def caption_variant_gains(eval_metrics: dict, kinds: dict[str, str]) -> str:
    """RLVR's gain and each control's, and the range of the placebos' and the nulls' gains."""
    from rlvr_utils.core.captions import change, span

    gains = {name: v["gain"] for name, v in eval_metrics.get("variants", {}).items() if "gain" in v}
    if not gains:
        return "Greedy accuracy gain over SFT: no treatment was evaluated."
    points = dict(scale=100, unit=" points")
    parts = [f"{name} {change(gain, **points)}" for name, gain in gains.items()
             if kinds.get(name) in ("study", "control", "user")]
    for kind, plural in (("placebo", "placebos"), ("null", "nulls")):
        values = [g["value"] for name, g in gains.items() if kinds.get(name) == kind]
        if values:
            parts.append(f"the {plural}' gains range {span(values, sign=True, **points)}")
    return "Greedy accuracy gain over SFT (paired 95% CI): " + "; ".join(parts) + "."


def variant_gains(eval_metrics: dict, kinds: dict[str, str]) -> plt.Figure:
    """Greedy accuracy gain over SFT of every treatment (paired 95% interval), coloured by kind (`kinds`:
    {treatment: kind}, treatments.registry.kinds): RLVR, the controls, the identical model and the nulls, so a
    reader sees at once whether one component alone reaches RLVR's gain."""
    rows = [(name, v["gain"]) for name, v in eval_metrics.get("variants", {}).items()]
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH, 0.45 * max(len(rows), 1) + 1.4))
    for i, (name, gain) in enumerate(rows):
        color = KIND_COLORS.get(kinds.get(name), "#555555")
        lo, hi = 100 * gain["ci"][0], 100 * gain["ci"][1]
        ax.errorbar([100 * gain["value"]], [i], xerr=[[100 * gain["value"] - lo], [hi - 100 * gain["value"]]],
                    fmt="o", color=color, capsize=4)
    ax.axvline(0, color="0.3", lw=1, ls="--")
    ax.set_yticks(range(len(rows)), [name for name, _ in rows])
    ax.invert_yaxis()
    ax.set(xlabel="greedy accuracy minus SFT's (points, paired 95% CI)",
           title="Accuracy gain over SFT: RLVR, its controls and its nulls")
    fig.tight_layout()
    return fig
