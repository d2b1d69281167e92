"""Scenes of the synthetic world and the questions asked about them (training and stand-ins alike).

Images are 32x32 px with a 2x2 grid of cells; a cell is empty, holds a coloured shape (5 colours
x 3 shapes) or a white digit (3x5 bitmap font, scaled x2). Every function takes a numpy Generator,
so the same seed gives the same scenes and questions.

Multiple-choice options are listed in the world's fixed order (colours red, green, blue, yellow,
purple; shapes circle, square, triangle; counts; cells; digits ascending), whole when there are at
most five, so an answer always has the same letter; see ``_options`` for why.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from llavakd.model.chat import LETTER, LETTER_CN, SHORT, UNANSWERABLE

IMAGE_SIZE = 32
COLORS = {"red": (220, 45, 45), "green": (45, 200, 70), "blue": (60, 100, 240),
          "yellow": (235, 220, 50), "purple": (170, 70, 210)}
COLORS_CN = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色"}
SHAPES = ("circle", "square", "triangle")
SHAPES_CN = {"circle": "圆形", "square": "正方形", "triangle": "三角形"}
CELLS = ("top left", "top right", "bottom left", "bottom right")
COUNT_WORDS = ("zero", "one", "two", "three", "four")
LETTERS = "ABCDE"
MAX_OPTIONS = 5  # MMBench rows hold options A-E
DIGIT_SHARE = 0.7  # of images with a free cell: reading digits is the slowest skill to learn

# 3x5 bitmap digits, rows top to bottom
_FONT = {
    "0": ("111", "101", "101", "101", "111"), "1": ("010", "110", "010", "010", "111"),
    "2": ("111", "001", "111", "100", "111"), "3": ("111", "001", "111", "001", "111"),
    "4": ("101", "101", "111", "001", "001"), "5": ("111", "100", "111", "001", "111"),
    "6": ("111", "100", "111", "101", "111"), "7": ("111", "001", "010", "010", "010"),
    "8": ("111", "101", "111", "101", "111"), "9": ("111", "101", "111", "001", "111"),
}


@dataclass(frozen=True)
class Obj:
    cell: int
    kind: str  # "shape" | "digit"
    color: str = ""
    shape: str = ""
    digit: str = ""

    def name(self) -> str:
        return f"{self.color} {self.shape}" if self.kind == "shape" else f"the number {self.digit}"


# ----------------------------------------------------------------------------- scenes and pixels


def sample_scene(rng: np.random.Generator) -> list[Obj]:
    cells = list(rng.permutation(4))
    n = int(rng.integers(1, 4))
    objs = [Obj(int(cells[i]), "shape", str(rng.choice(list(COLORS))), str(rng.choice(SHAPES))) for i in range(n)]
    if n < 4 and rng.random() < DIGIT_SHARE:
        objs.append(Obj(int(cells[n]), "digit", digit=str(rng.integers(0, 10))))
    return sorted(objs, key=lambda o: o.cell)


def render(objs: list[Obj], rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    half = size // 2
    base = rng.integers(0, 50)
    img = np.full((size, size, 3), base, dtype=np.float64) + rng.integers(0, 15, 3)
    yy, xx = np.mgrid[0:half, 0:half]
    for o in objs:
        oy, ox = (o.cell // 2) * half, (o.cell % 2) * half
        cy = half / 2 + rng.uniform(-1.5, 1.5)
        cx = half / 2 + rng.uniform(-1.5, 1.5)
        if o.kind == "shape":
            r = rng.uniform(4.5, 6.5)
            if o.shape == "circle":
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            elif o.shape == "square":
                mask = (np.abs(yy - cy) <= r * 0.85) & (np.abs(xx - cx) <= r * 0.85)
            else:  # triangle, apex up
                top, bottom = cy - r, cy + r * 0.8
                frac = (yy - top) / (bottom - top)
                mask = (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= frac * r)
            color = np.array(COLORS[o.color], dtype=np.float64) + rng.normal(0, 12, 3)
        else:
            glyph = np.array([[c == "1" for c in row] for row in _FONT[o.digit]])
            big = np.kron(glyph, np.ones((2, 2), dtype=bool))  # 10 x 6
            mask = np.zeros((half, half), dtype=bool)
            y0, x0 = int(round(cy - 5)), int(round(cx - 3))
            mask[y0:y0 + 10, x0:x0 + 6] = big
            color = np.full(3, 240.0) + rng.normal(0, 8, 3)
        img[oy:oy + half, ox:ox + half][mask] = color
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def caption(objs: list[Obj]) -> str:
    return " ".join(f"{'a ' if o.kind == 'shape' else ''}{o.name()} at {CELLS[o.cell]} ." for o in objs)


# ----------------------------------------------------------------------------- questions


@dataclass
class QA:
    kind: str  # colour | shape | count | position | exist | text
    question: str
    answer: str
    options: tuple[str, ...] = ()  # distractor pool for multiple choice (answer included)
    cn: tuple[str, str] | None = None  # Chinese (question, answer) when the type has one


def _shapes(objs):
    return [o for o in objs if o.kind == "shape"]


# The yes/no checks ask about one attribute at a time: "Is there a circle?", "Is there a red
# shape?", as POPE asks about one object category. A claim that ties a colour to a shape ("Is
# there a red circle?") was answered "yes" whatever the image by half of the tiny models trained
# on it (README, "Is the world learnable?").
ITEMS = tuple(("shape", s) for s in SHAPES) + tuple(("colour", c) for c in COLORS)


def item_text(item: tuple[str, str]) -> str:
    kind, value = item
    return f"a {value}" if kind == "shape" else f"a {value} shape"


def present_items(objs: list[Obj]) -> set[tuple[str, str]]:
    return {("shape", o.shape) for o in _shapes(objs)} | {("colour", o.color) for o in _shapes(objs)}


def presence_item(objs: list[Obj], rng: np.random.Generator, truth: bool) -> tuple[str, str]:
    """A shape or colour item that is in the image (truth) or not; shapes and colours equally often
    unless every shape is present, when a false claim has to be about a colour."""
    present = present_items(objs)
    kind = "shape" if rng.random() < 0.5 else "colour"
    pool = [it for it in ITEMS if it[0] == kind and (it in present) == truth]
    if not pool:
        pool = [it for it in ITEMS if it[0] == "colour" and (it in present) == truth]
    return pool[int(rng.integers(len(pool)))]


def count_claim(n: int) -> str:
    """ "Is there one shape" / "Are there two shapes" (a yes/no count question)."""
    return "Is there one shape" if n == 1 else f"Are there {COUNT_WORDS[n]} shapes"


def _digit_question(objs: list[Obj]) -> list[QA]:
    """"what number is written ?" when the image holds a digit (TextVQA's question)."""
    digits = [d for d in objs if d.kind == "digit"]
    return [QA("text", "what number is written ?", digits[0].digit, tuple("0123456789"))] if digits else []


def questions(objs: list[Obj], rng: np.random.Generator) -> list[QA]:
    """One question of each type that this scene supports."""
    shapes = _shapes(objs)
    out: list[QA] = []
    o = shapes[int(rng.integers(len(shapes)))]
    same_shape = [s for s in shapes if s.shape == o.shape]
    if len(same_shape) == 1 and rng.random() < 0.5:
        q = f"what color is the {o.shape} ?"
        cn = (f"图中{SHAPES_CN[o.shape]}是什么颜色？", COLORS_CN[o.color])
    else:
        q = f"what color is the shape at {CELLS[o.cell]} ?"
        cn = None
    out.append(QA("colour", q, o.color, tuple(COLORS), cn))
    o = shapes[int(rng.integers(len(shapes)))]
    same_color = [s for s in shapes if s.color == o.color]
    if len(same_color) == 1 and rng.random() < 0.5:
        q = f"what shape is {o.color} ?"
        cn = (f"图中{COLORS_CN[o.color]}的是什么形状？", SHAPES_CN[o.shape])
    else:
        q = f"what shape is at {CELLS[o.cell]} ?"
        cn = None
    out.append(QA("shape", q, o.shape, SHAPES, cn))
    if rng.random() < 0.5:
        out.append(QA("count", "how many shapes are there ?", COUNT_WORDS[len(shapes)], COUNT_WORDS[:4]))
    else:
        c = str(rng.choice(list(COLORS)))
        n = sum(s.color == c for s in shapes)
        out.append(QA("count", f"how many {c} shapes are there ?", COUNT_WORDS[n], COUNT_WORDS[:4]))
    unique = [s for s in shapes if sum((t.color, t.shape) == (s.color, s.shape) for t in shapes) == 1]
    if unique:
        o = unique[int(rng.integers(len(unique)))]
        out.append(QA("position", f"where is the {o.color} {o.shape} ?", CELLS[o.cell], CELLS))
    item = presence_item(objs, rng, truth=rng.random() < 0.5)
    out.append(QA("exist", f"is there {item_text(item)} ?", "yes" if item in present_items(objs) else "no",
                  ("yes", "no")))
    out += _digit_question(objs)
    return out


def choice_questions(objs: list[Obj], rng: np.random.Generator) -> list[QA]:
    """Multiple-choice questions whose wrong options are absent from the image.

    "Which color is in the image?" can be answered by checking each option against the picture,
    without first working out which object a question refers to; the ``questions`` types need
    that binding step too. Both kinds go into training and into the letter-choice stand-ins, so a
    small model has something within its reach there and a larger one has room to do better.
    """
    shapes = _shapes(objs)
    out: list[QA] = []
    colors = sorted({s.color for s in shapes})
    c = colors[int(rng.integers(len(colors)))]
    pool = tuple(x for x in COLORS if x == c or x not in colors)
    out.append(QA("colour_choice", "which color is in the image ?", c, pool,
                  ("图中有哪种颜色？", COLORS_CN[c])))
    kinds = sorted({s.shape for s in shapes})
    if len(kinds) < len(SHAPES):
        sh = kinds[int(rng.integers(len(kinds)))]
        pool = tuple(x for x in SHAPES if x == sh or x not in kinds)
        out.append(QA("shape_choice", "which shape is in the image ?", sh, pool,
                      ("图中有哪种形状？", SHAPES_CN[sh])))
    out += _digit_question(objs)
    return out


def _cn_version(qa: QA) -> QA:
    """The Chinese form of a question that has one; options are translated one to one."""
    table = COLORS_CN if qa.kind.startswith("colour") else SHAPES_CN
    return QA(qa.kind, qa.cn[0], qa.cn[1], tuple(table[x] for x in qa.options))


def _options(qa: QA, rng: np.random.Generator, k: int = MAX_OPTIONS) -> tuple[list[str], int]:
    """Answer options in the world's fixed order (the order of ``qa.options``).

    A pool of at most ``k`` entries is offered whole, so the letter of an answer is the same every
    time (circle is always A among the three shapes): a tiny model learns letter choice as it
    learns any other answer. Larger pools (digits) keep the answer and k - 1 sampled distractors,
    still in that order. Shuffled options would make the letter depend on the option list alone,
    a look-up that the two-layer tiny LLMs did not learn within the budget (see README).
    """
    if len(qa.options) <= k:
        opts = [str(x) for x in qa.options]
    else:
        pool = [x for x in qa.options if x != qa.answer]
        keep = {str(x) for x in rng.choice(pool, size=k - 1, replace=False)} | {qa.answer}
        opts = [str(x) for x in qa.options if x in keep]
    return opts, opts.index(qa.answer)


def _mc_text(question: str, opts: list[str], suffix: str = LETTER, layout: str = "list") -> str:
    """Options as a plain list (ScienceQA/MMMU) or MMBench's "There are several options:" block."""
    listed = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(opts))
    if layout == "mmbench":
        return f"{question} There are several options:\n{listed}\n{suffix}"
    return question + "\n" + listed + suffix


TEXT_ONLY = [  # (question, answer): world knowledge without an image
    ("what number comes after {n} ?", lambda n: str(n + 1)),
    ("what number comes before {m} ?", lambda m: str(m - 1)),
    ("is {c} a color ?", lambda c: "yes"),
    ("is {s} a color ?", lambda s: "no"),
    ("is {s} a shape ?", lambda s: "yes"),
    ("is {c} a shape ?", lambda c: "no"),
]


def text_only_turns(rng: np.random.Generator) -> list[tuple[str, str]]:
    turns = []
    for _ in range(int(rng.integers(1, 4))):
        i = int(rng.integers(len(TEXT_ONLY)))
        tmpl, fn = TEXT_ONLY[i]
        if "{n}" in tmpl:
            v = int(rng.integers(0, 9))
            turns.append((tmpl.format(n=v), fn(v)))
        elif "{m}" in tmpl:
            v = int(rng.integers(1, 10))
            turns.append((tmpl.format(m=v), fn(v)))
        elif "{c}" in tmpl:
            v = str(rng.choice(list(COLORS)))
            turns.append((tmpl.format(c=v), fn(v)))
        else:
            v = str(rng.choice(SHAPES))
            turns.append((tmpl.format(s=v), fn(v)))
    return turns


def verification_turns(objs: list[Obj], rng: np.random.Generator) -> list[tuple[str, str]]:
    """A yes/no check of one attribute (MME- and POPE-style), true or false with equal probability."""
    shapes = _shapes(objs)
    truth = rng.random() < 0.5
    kind = int(rng.integers(4 if any(x.kind == "digit" for x in objs) else 3))
    if kind == 0:
        q = f"Is there {item_text(presence_item(objs, rng, truth))} in the image?"
    elif kind == 1:
        n = len(shapes) if truth else int(rng.choice([k for k in (1, 2, 3) if k != len(shapes)]))
        q = f"{count_claim(n)} in the image?"
    elif kind == 2:
        cells = [o.cell for o in shapes] if truth else [k for k in range(4) if k not in {o.cell for o in shapes}]
        q = f"Is there a shape at {CELLS[cells[int(rng.integers(len(cells)))]]}?"
    else:
        d = next(x.digit for x in objs if x.kind == "digit")
        shown = d if truth else str(rng.choice([x for x in "0123456789" if x != d]))
        q = f"Is the number {shown} written in the image?"
    suffix = " Please answer yes or no." if rng.random() < 0.3 else SHORT
    return [(q + suffix, "yes" if truth else "no")]


SQA_CONTEXT = "The image shows coloured shapes on a dark background."


def choice_turn(qa: QA, rng: np.random.Generator) -> tuple[str, str]:
    """One letter-choice turn in a benchmark's layout: MMBench EN/CN, ScienceQA (with or without
    its "Context:" line) or a plain MMMU-style list."""
    if qa.cn is not None and rng.random() < 0.3:
        cq = _cn_version(qa)
        opts, k = _options(cq, rng)
        suffix = LETTER_CN if rng.random() < 0.5 else LETTER
        return _mc_text(cq.question, opts, suffix, layout="mmbench"), LETTERS[k]
    opts, k = _options(qa, rng)
    if rng.random() < 0.5:
        return _mc_text(qa.question, opts, layout="mmbench"), LETTERS[k]
    question = f"Context: {SQA_CONTEXT}\n{qa.question}" if rng.random() < 0.3 else qa.question
    return _mc_text(question, opts), LETTERS[k]


YES_NO_CHECKS = 3  # yes/no checks per training image (the demo's world asks none)


def instruction_turns(objs: list[Obj], rng: np.random.Generator,
                      checks: int = YES_NO_CHECKS) -> list[tuple[str, str]]:
    """A multi-turn conversation about one image, mixing the benchmarks' answer formats; ``checks``
    yes/no checks among them (0 in the demo's world)."""
    # three yes/no checks per image (a one-bit answer teaches least per turn): with two, the
    # 1.8b-like LLM at seed 1234 answered "yes" to every shape check (README, "Is the world
    # learnable?"); cell and digit checks stay at chance either way
    turns = [t for _ in range(checks) for t in verification_turns(objs, rng)]
    if rng.random() < 0.5:
        choices = choice_questions(objs, rng)
        turns.append(choice_turn(choices[int(rng.integers(len(choices)))], rng))
    for qa in questions(objs, rng):
        style = rng.random()
        if rng.random() < 0.3:  # VizWiz/TextVQA/MMMU capitalise their questions
            qa = QA(qa.kind, qa.question[0].upper() + qa.question[1:], qa.answer, qa.options, qa.cn)
        if style < 0.50 or qa.kind == "text":  # digits are asked as TextVQA asks them
            # VizWiz's prompt also precedes answerable questions: without these turns the
            # "insufficient information" sentence would always mean "unanswerable"
            suffix = UNANSWERABLE + SHORT if rng.random() < 0.2 else SHORT
            turns.append((qa.question + suffix, qa.answer))
        elif style < 0.75:
            turns.append((qa.question, qa.answer))
        else:
            turns.append(choice_turn(qa, rng))
    if not any(o.kind == "digit" for o in objs) and rng.random() < 0.3:
        turns.append(("what number is written ?" + UNANSWERABLE + SHORT, "unanswerable"))
    order = rng.permutation(len(turns))
    return [turns[i] for i in order]


