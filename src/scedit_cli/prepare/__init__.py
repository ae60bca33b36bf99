"""`scedit prepare`: condition datasets, LAION filtering, style-caption cleaning.

- `runner.run_prepare`: condition maps for a dataset (parallel, shardable, resumable)
- `laion.filter_laion`: LAION-style metadata filtering with a per-rule report
- `style.clean_style_dataset`: remove style words from captions and insert a trigger
"""
