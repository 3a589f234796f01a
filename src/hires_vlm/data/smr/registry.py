"""The SMR sources by name: folder names, expected layout, converter, default cap.

The one place that maps a source name to how it is read; an unknown name fails with
"… is not supported" and the list of known ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .records import Item
from .sources import ai2d, arxivqa, chartqa, dvqa, geoqa, geometry3k, mathvision, scienceqa
from .sources import tabmwp, tqa

Converter = Callable[[Path], Iterator[Item]]


@dataclass(frozen=True)
class SourceSpec:
    """How one SMR source is found and read.

    ``folders``: accepted names of its subfolder in the sources dir (first is canonical,
    matched case-insensitively). ``layout``: the files expected inside, for messages and
    ``--help``. ``convert``: checks the layout at once (raising ``SourceLayoutError``) and
    returns a lazy iterator of records; big files are parsed only when it is iterated, one
    source at a time. ``default_limit``: random cap on the source's candidates.
    """

    name: str
    folders: tuple[str, ...]
    layout: str
    convert: Converter
    default_limit: int | None = None


SOURCES: dict[str, SourceSpec] = {
    spec.name: spec
    for spec in (
        SourceSpec("scienceqa", ("scienceqa", "ScienceQA"), scienceqa.LAYOUT, scienceqa.convert),
        SourceSpec("tqa", ("tqa", "TextbookQA", "tqa_train_val_test"), tqa.LAYOUT, tqa.convert),
        SourceSpec("ai2d", ("ai2d", "AI2D"), ai2d.LAYOUT, ai2d.convert),
        SourceSpec("chartqa", ("chartqa", "ChartQA", "ChartQA Dataset"), chartqa.LAYOUT,
                   chartqa.convert),
        SourceSpec("dvqa", ("dvqa", "DVQA"), dvqa.LAYOUT, dvqa.convert, dvqa.DEFAULT_LIMIT),
        SourceSpec("tabmwp", ("tabmwp", "TabMWP"), tabmwp.LAYOUT, tabmwp.convert),
        SourceSpec("geoqa3", ("geoqa3", "GeoQA3"), geoqa.LAYOUT_GEOQA3, geoqa.convert),
        SourceSpec("geoqa_plus", ("geoqa_plus", "GeoQA+", "GeoQA-Plus", "geoqa-plus"),
                   geoqa.LAYOUT_GEOQA_PLUS, geoqa.convert),
        SourceSpec("geometry3k", ("geometry3k", "Geometry3K"), geometry3k.LAYOUT,
                   geometry3k.convert),
        SourceSpec("mathvision", ("mathvision", "MathVision", "MATH-V", "MATH-Vision"),
                   mathvision.LAYOUT, mathvision.convert),
        SourceSpec("arxivqa", ("arxivqa", "ArxivQA"), arxivqa.LAYOUT, arxivqa.convert),
    )
}


def get_source(name: str) -> SourceSpec:
    """The spec for a source name or any of its folder names (case-insensitive)."""
    wanted = name.strip().casefold()
    for spec in SOURCES.values():
        if wanted in (folder.casefold() for folder in (spec.name, *spec.folders)):
            return spec
    raise ValueError(f"SMR source {name!r} is not supported; known: {', '.join(SOURCES)}")


def select_sources(names: Iterable[str] | None) -> list[SourceSpec]:
    """Specs in registry order; all of them when ``names`` is None."""
    if names is None:
        return list(SOURCES.values())
    wanted = {get_source(name).name for name in names}
    return [spec for spec in SOURCES.values() if spec.name in wanted]


def find_source_dir(sources_dir: Path, spec: SourceSpec) -> Path | None:
    """The subfolder of ``sources_dir`` holding ``spec``'s source, if there is one."""
    folders = {child.name.casefold(): child for child in sources_dir.iterdir() if child.is_dir()}
    for folder in spec.folders:
        if folder.casefold() in folders:
            return folders[folder.casefold()]
    return None
