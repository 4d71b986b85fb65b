"""Draw figures/producer-consumer-workflow.png, the workflow diagram in the README.

    python figures/draw_workflow.py [OUTPUT.png]

Plain matplotlib patches and arrows, so the picture can be changed and re-drawn.
"""
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
COLORS = {"head": "#e8e8e8", "sim": "#fde0c5", "train": "#c9ecf2", "model": "#dcd3f0",
          "futures": "#f6c9c9", "proxies": "#f3dcef", "files": "#cfe0f6", "ddict": "#cdeccd"}


def box(ax, x, y, w, h, text, color, size=10, weight="normal", style="round,pad=0.02"):
    """A rounded box centred on (x, y)."""
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle=style,
                                facecolor=color, edgecolor="#444444", linewidth=1.2))
    ax.text(x, y, text, ha="center", va="center", fontsize=size, weight=weight)


def arrow(ax, start, end, color="#333333", style="-|>", ls="-", rad=0.0, width=1.4):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=14, color=color,
                                 linewidth=width, linestyle=ls,
                                 connectionstyle=f"arc3,rad={rad}", shrinkA=2, shrinkB=2))


def stack(ax, x, ys, w, h, labels, color):
    """A column of small boxes: the members of an ensemble."""
    for y, label in zip(ys, labels):
        box(ax, x, y, w, h, label, color, size=9)


def group(ax, x0, y0, x1, y1, title):
    """A light frame around the members of one stage, titled on top."""
    ax.add_patch(FancyBboxPatch((x0, y0), x1 - x0, y1 - y0, boxstyle="round,pad=0.05",
                                facecolor="#fafafa", edgecolor="#bbbbbb", linewidth=1))
    ax.text((x0 + x1) / 2, y1 - 0.25, title, ha="center", va="center", fontsize=11, weight="bold")


def flow(ax, x0, x1, y, label):
    """A wide arrow between two stages, labelled above."""
    ax.add_patch(FancyArrowPatch((x0, y), (x1, y), arrowstyle="simple,head_width=1.6,"
                                 "head_length=1.2,tail_width=0.6", mutation_scale=18,
                                 color="#555555"))
    ax.text((x0 + x1) / 2, y + 0.42, label, ha="center", va="bottom", fontsize=9, style="italic")


# the rows of the two ensembles' members, top to bottom, with "..." between the 3rd and 4th
MEMBER_YS = [4.2, 3.55, 2.9, 1.85]
DOTS_Y = 2.38


def draw_head(ax):
    """The head process launches both ensembles and collects their small reports."""
    box(ax, 6.2, 5.9, 6.2, 0.9, "", COLORS["head"])
    ax.text(6.2, 6.12, "Head process (the workflow script)", ha="center", va="center",
            fontsize=11, weight="bold")
    ax.text(6.2, 5.82, "launches the tasks, collects their small reports, times every phase",
            ha="center", va="center", fontsize=9)
    ax.text(6.2, 5.57, "futures by value: all the training data passes through here as well",
            ha="center", va="center", fontsize=9, color="#b03030")
    arrow(ax, (3.1, 5.9), (1.45, 5.1), ls=":", rad=0.25)
    arrow(ax, (9.3, 5.9), (10.65, 5.1), ls=":", rad=-0.25)
    ax.text(1.5, 5.75, "launch", fontsize=9, style="italic")
    ax.text(10.4, 5.75, "launch", fontsize=9, style="italic")


def draw_simulations(ax):
    """The producers: S simulations, each of an N x N grid (two letters, two meanings)."""
    group(ax, 0.3, 0.25, 2.6, 5.05, "Simulation ensemble")
    stack(ax, 1.45, MEMBER_YS, 2.0, 0.48,
          ["sim 0 (period 40)", "sim 1", "sim 2", "sim S-1 (period 80)"], COLORS["sim"])
    ax.text(1.45, DOTS_Y, "...", ha="center", va="center", fontsize=14)
    ax.text(1.45, 0.95, "S simulations,\neach a 2D wave on an\nN x N grid: 10 pairs\n"
            "(u(t), u(t+dt))", ha="center", va="center", fontsize=8.5, style="italic")


def draw_transports(ax):
    """The four transports, one lane each; the futures' data goes through the head."""
    group(ax, 4.1, 0.25, 8.3, 5.05, "Data transport (one of four)")
    lanes = [(4.05, "futures", "Parsl + futures (by value)",
              "the arrays themselves, pickled, sent over\nZeroMQ via the head process"),
             (3.05, "proxies", "Parsl + ProxyStore (by proxy)",
              "the arrays go into a store (Redis, files or\n"
              "ZeroMQ); only small proxies pass the head"),
             (2.05, "files", "Parsl + file system",
              "one .npy file per simulation\non the (parallel) file system"),
             (1.05, "ddict", "DragonHPC + DDict",
              "one key per simulation in a DDict\nsharded over the nodes' memory")]
    for y, key, title, detail in lanes:
        box(ax, 6.2, y, 3.9, 0.82, "", COLORS[key])
        ax.text(6.2, y + 0.2, title, ha="center", va="center", fontsize=10, weight="bold")
        ax.text(6.2, y - 0.17, detail, ha="center", va="center", fontsize=8.5)
    # futures: simulation results go up to the head, the head sends them down to every trainer
    arrow(ax, (5.1, 4.48), (5.1, 5.43), color="#b03030", width=1.8)
    arrow(ax, (7.3, 5.43), (7.3, 4.48), color="#b03030", width=1.8)
    flow(ax, 2.7, 4.0, 2.55, "each simulation\nhands over once")
    flow(ax, 8.4, 9.45, 2.55, "every trainer\nreads ALL")


def draw_trainers(ax):
    """The consumers, M trainers, and the models they produce."""
    group(ax, 9.55, 0.25, 11.75, 5.05, "CNN ensemble")
    stack(ax, 10.65, MEMBER_YS, 1.9, 0.48,
          ["trainer 0 (k=3)", "trainer 1 (k=5)", "trainer 2 (k=7)", "trainer M-1"],
          COLORS["train"])
    ax.text(10.65, DOTS_Y, "...", ha="center", va="center", fontsize=14)
    ax.text(10.65, 0.95, "M trainers, one GPU each\nwhere the node has GPUs;\neach trains on "
            "ALL the data", ha="center", va="center", fontsize=8.5, style="italic")
    ax.text(12.45, 4.8, "Models", ha="center", va="center", fontsize=11, weight="bold")
    for y in MEMBER_YS:
        box(ax, 12.45, y, 0.8, 0.4, "model", COLORS["model"], size=8.5)
        arrow(ax, (11.62, y), (12.03, y))
    ax.text(12.45, DOTS_Y, "...", ha="center", va="center", fontsize=14)


def draw(path):
    fig, ax = plt.subplots(figsize=(13, 6.4))
    ax.set_xlim(0, 13)
    ax.set_ylim(0.0, 6.6)
    ax.axis("off")
    for part in (draw_head, draw_simulations, draw_transports, draw_trainers):
        part(ax)
    ax.set_title("Producer-consumer workflow: every trainer consumes all the simulations' data",
                 fontsize=13, weight="bold")
    fig.savefig(path, dpi=150, bbox_inches="tight", facecolor="white")
    plt.close(fig)


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "producer-consumer-workflow.png")
    draw(out)
    print(f"wrote {out}")
