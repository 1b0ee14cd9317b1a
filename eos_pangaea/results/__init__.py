"""Read PANGAEA experiment folders and rank them by Avg DTB (average distance to best).

Modules: ``runs`` reads experiment folders and logs, ``reference`` loads the
shipped reference tables (EoS-FM paper, arXiv 2511.21523), ``leaderboard``
aggregates seeds and computes Avg DTB, ``render`` writes text, Markdown, CSV,
LaTeX and JSON, and ``plot`` draws the figure. Nothing in this package imports
torch.
"""
