"""PNG plots of population runs: ES fitness over generations, member accuracy over epochs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from cnnlab.utils.io import atomic_path


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_es_fitness(history: Sequence[dict[str, Any]], path: str | Path, title: str = "", fitness: str = "fitness") -> None:
    """Candidates' mean / best fitness and the mean's fitness per generation; test accuracy on a second axis."""
    plt = _figure()
    gens = [h["generation"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.fill_between(gens, [h["fitness_min"] for h in history], [h["fitness_max"] for h in history], alpha=0.2,
                    label="candidates (min-max)")
    ax.plot(gens, [h["fitness_mean"] for h in history], label="candidates (mean)")
    scored = [h for h in history if "mean_fitness" in h]
    if scored:
        ax.plot([h["generation"] for h in scored], [h["mean_fitness"] for h in scored], label="mean of the search distribution")
    ax.set_xlabel("generation")
    ax.set_ylabel(fitness)
    tested = [h for h in history if "test_acc" in h]
    if tested:
        ax2 = ax.twinx()
        ax2.plot([h["generation"] for h in tested], [h["test_acc"] for h in tested], "o-", color="black", label="test accuracy")
        ax2.set_ylabel("test accuracy (mean)")
        ax2.legend(loc="lower right")
    ax.legend(loc="upper left")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def plot_member_accuracy(history: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Test accuracy of every member per evaluated epoch."""
    plt = _figure()
    tested = [h for h in history if "test_acc" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    if tested:
        for m in range(len(tested[0]["test_acc"])):
            ax.plot([h["epoch"] for h in tested], [h["test_acc"][m] for h in tested], marker="o", alpha=0.7, label=f"member {m}")
        if len(tested[0]["test_acc"]) <= 10:
            ax.legend(fontsize="small")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
