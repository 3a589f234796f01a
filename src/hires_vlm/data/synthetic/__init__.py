"""A procedurally generated, seeded high-resolution benchmark: the data of ``hires-vlm demo``.

The package, by part: :mod:`.drawing` (constants of the visual world, pattern fields, the canvas),
:mod:`.families` (what each family draws and asks; sizes and seeds of items), :mod:`.probes` (what
one low-resolution view keeps), :mod:`.scoring` (answers against the records) and :mod:`.writing`
(the files, into a folder the generator owns).

Six task families of images drawn with numpy (long side 2·S = 224 px, short side 112–224 px,
seven aspect ratios from 1:2 to 2:1), each with a short canonical answer, written as LLaVA
conversation JSON. The point of the set is to separate what a single low-resolution view
keeps from what full-resolution tiles keep. The *fine* patterns most families use are 1-px
stripes and checkerboards: every 2×2 block of every class has the same mean, and the pattern
fades out (sin²) towards the edges of its 12–16 px square, so LLaVA-1.5's low-resolution path
(pad to square with the mean colour, antialiased bicubic resize to S = 112, a reduction by 2)
turns every class into the same flat square, while a 14-px ViT patch over full-resolution pixels
sees the stripes. :func:`lowres_separability` proves both by measurement on the benchmark's own
generator; :func:`lowres_probe` asks how much of any family the whole low-resolution view keeps.

Families (``FAMILIES``; answers balanced to ±1 within a split and question type; chance =
1 / #answers of the question type):

===============  ====================================================  ==========================
name             what is drawn / asked                                 answers
===============  ====================================================  ==========================
fine_detail      one 12–16 px square filled with a 1-px pattern        plain, horizontal,
                 among distractor discs; "what pattern?"               vertical, checkered
counting         1–4 plain squares (12–16 % of the short side: still   1, 2, 3, 4 (digits; number
                 7–18 px at low resolution); "how many?"               words are normalised)
quadrant         four squares, one per quadrant, one patterned;        top left, top right,
                 "which quadrant?"                                     bottom left, bottom right
tile_border      a bar of one 1-px pattern (or none) split exactly on  plain, horizontal,
                 a tile border of a typical grid; "what pattern?"      vertical, checkered
global_layout    one big coloured shape; "left or right?" /            left, right /
                 "what colour?" (two question types)                   red, green, blue, yellow
existence        1–3 squares, all plain or one patterned; "is there    yes, no (POPE-style)
                 a patterned square?"
===============  ====================================================  ==========================

Determinism: every image has its own seed, ``[seed, tag, split, crc32(family), index, attempt]``,
so the files do not depend on the number of workers and train and test are different streams;
a (pixel hash, question) pair found in both splits is redrawn (``attempt + 1``). Image arrays are
``[H x W x 3]`` uint8; sizes are (width, height) as everywhere in the package.
"""


from .drawing import (
    ASPECTS,
    DEFAULT_SIZE_RANGE,
    DEFAULT_TILE_SIZE,
    JSON_FILES,
    PATTERNS,
    SPLITS,
    VERSION,
    pattern_field,
)
from .families import BORDER_CUTS, FAMILIES, Family, Sample, border_lines, question_vocabulary, texture_field
from .probes import lowres_probe, lowres_separability, lowres_view
from .scoring import normalize_answer, score_predictions
from .writing import BenchmarkInfo, generate_benchmark, read_records


__all__ = [
    "ASPECTS", "BORDER_CUTS", "BenchmarkInfo", "DEFAULT_SIZE_RANGE", "DEFAULT_TILE_SIZE", "FAMILIES", "Family",
    "JSON_FILES", "PATTERNS", "SPLITS", "Sample", "VERSION", "border_lines", "generate_benchmark", "lowres_probe",
    "lowres_separability", "lowres_view", "normalize_answer", "pattern_field", "question_vocabulary",
    "read_records", "score_predictions", "texture_field",
]
