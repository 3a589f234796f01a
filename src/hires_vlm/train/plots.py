"""The loss figure of a stage (``<stage>/loss.png``): training loss per logged step, and, when the stage
evaluates, the eval loss on the same axes (and the answer accuracy on a second axis)."""

from __future__ import annotations

import os


def _points(history: list[dict], key: str) -> list[tuple[float, float]]:
    return [(h["step"], h[key]) for h in history if key in h and "step" in h]


def save_loss_plot(history: list[dict], path: str, title: str) -> None:
    """Draw ``trainer.state.log_history`` into ``path`` (written whole or not at all)."""
    train, evals, acc = (_points(history, k) for k in ("loss", "eval_loss", "eval_accuracy"))
    if not train and not evals:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    if train:
        ax.plot([p[0] for p in train], [p[1] for p in train], marker=".", label="training loss")
    if evals:
        ax.plot([p[0] for p in evals], [p[1] for p in evals], marker="o", color="tab:orange", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    handles, labels = ax.get_legend_handles_labels()
    if acc:
        ax2 = ax.twinx()
        ax2.plot([p[0] for p in acc], [p[1] for p in acc], marker="s", ls="--", color="tab:green",
                 label="eval accuracy")
        ax2.set_ylabel("accuracy")
        ax2.set_ylim(-0.02, 1.02)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if evals or acc:
        ax.legend(handles, labels, fontsize=8)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
