"""The paper's experiments: launchers, the CPU rehearsal, reports, notebooks and benchmarks.

- `launch.py`: the registry of experiments (Tables 1-4) → rows → (config, overrides, eval
  arguments), and the launcher that trains (`torchrun ... train.py`) and evaluates (`eval.py`)
  each row into `RESULTS/<experiment>/<row>/{train/, eval.json}`.
- `rehearsal.py`: the same registry at toy scale on CPU (tiny model, synthetic data, toy benchmark
  files, tiny judges), so the whole pipeline and every table and plot can be seen without a GPU.
- `report.py`: reads a results folder and renders the paper's tables (ours beside the paper's
  numbers from `paper_numbers.py`) and Figure 4; `tables.ipynb` and `curves.ipynb` call it.
- `toy_benchmarks.py`, `toy_judges.py`: the rehearsal's stand-in benchmark files and judge models.
- `bench_*.py`: speed benchmarks of single components (scripts, not tests).
- `LOG.md`: what was run and what was learned.
"""
