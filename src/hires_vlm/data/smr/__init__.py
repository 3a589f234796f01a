"""SMR: SliME's science-and-math reasoning instruction set, rebuilt from the released sources.

``build_smr(sources_dir, out_file, *, sources=None, image_root=None) -> SMRReport`` reads one
subfolder per source under ``sources_dir`` and writes a LLaVA conversation JSON list::

    [{"id": "<source>_<id>", "image": "<path relative to sources_dir or image_root>",
      "conversations": [{"from": "human", "value": "<image>\\n<question>"},
                        {"from": "gpt", "value": "<reasoning, if any>\\nThe answer is ..."}],
      "source": "<source>"}, ...]

Expected subfolders (names case-insensitive; see each ``sources/<name>.py`` for the fields read
and where the layout comes from)::

    scienceqa/   problems.json (+ pid_splits.json), images/<split>/<pid>/image.png
    tqa/         train/tqa_v1_train.json + the train/ images it names
    ai2d/        questions/*.json, images/, optional ai2d_test_ids.csv and abc_images/
    chartqa/     train/train_human.json, train/png/
    dvqa/        qa/train_qa.json, images/            (reasoning templates, 100K random)
    tabmwp/      problems_train.json, tables/<pid>.png
    geoqa3/      json/<id>.json + image/<id>.png      (pickled splits are never read)
    geoqa_plus/  json-image_files/<id>.json + <id>.png
    geometry3k/  {train,val}/<id>/data.json + img_diagram.png (+ logic_form.json)
    mathvision/  data/test.jsonl + data/testmini.jsonl, images/  (test-mini held out)
    arxivqa/     arxivqa.jsonl, images/

A missing source is reported and skipped; finding none is an error naming what was expected.
Records are skipped and counted when their image is missing or unreadable; exact duplicates
(image bytes + normalised question) are removed; the per-source counts are printed by the CLI
and written to ``<out>.report.json``. Package layout: ``sources/`` (one converter per source),
``registry`` (name → spec), ``prompts`` (text format), ``images`` (checks), ``build``, ``cli``.
"""

from .build import SMRError, build_smr, report_path
from .registry import SOURCES, SourceSpec, get_source
from .report import SMRReport, SourceCounts

__all__ = [
    "SMRError",
    "SMRReport",
    "SOURCES",
    "SourceCounts",
    "SourceSpec",
    "build_smr",
    "get_source",
    "report_path",
]
