"""KB-facts: store-catalogue questions only the shipped knowledge base can answer (the sim's second task family).

A fictional home-goods store (Larkfield) sells 1,152 products (96 brands x 12 kinds). Each product's facts (price, delivery fee, member
discount, warranty, return window) are written in one short document under ``pr1d/kb/catalogue/`` and
nowhere else: the names are invented, so no model knows them, and a model can only answer with the product's
document retrieved into its prompt. The facts are drawn once from a fixed seed, so the catalogue, the
documents and every task are the same on every machine.

Tiers follow GSM-lite's shape (two-digit additions and subtractions, which the tiny model already does):

* easy   -- one fact read off the document ("How much does the Brindle lamp cost, in dollars?");
* medium -- two facts and one step (price + delivery, or price - member discount);
* hard   -- three facts and two steps (price - discount + delivery).

Products are split, not tasks: a quarter of them is held out (:func:`eval_split`), so an evaluation never
asks about a product whose facts were in the training data; and there are too many training products to learn
their facts by heart, so what training teaches is reading the page. The sequential answer is the facts it
read, then the arithmetic, then ``Final Answer: N``; the Parallel trace reads the same facts two ways.

Pure Python, no torch: the sim, the daemon and the stages import it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pr1d.data import parallel_format as pf

__all__ = [
    "FAMILY",
    "PRODUCTS",
    "TIERS",
    "Product",
    "answer_matches",
    "catalogue",
    "corpus_dir",
    "documents",
    "eval_split",
    "generate_task",
    "heldout_slice",
    "parallel_trace",
    "render_sequential",
    "select_split",
    "solution_paths",
    "task_for",
    "train_split",
    "write_corpus",
]

FAMILY = "kb_facts"
TIERS = ("easy", "medium", "hard")
STORE = "Larkfield"
CATALOGUE_SEED = 4_172
EVAL_EVERY = 4  # every fourth product is held out

_BRANDS = (
    "Alder", "Brindle", "Corvid", "Dunmore", "Elsby", "Fennick", "Garrow", "Holloway", "Islay", "Jessop",
    "Kestle", "Lindqvist", "Marrow", "Nettley", "Oakum", "Pellin", "Quarry", "Rookwood", "Saltash", "Tamsin",
    "Ullock", "Varrow", "Wendle", "Yarrow", "Zennor", "Ashby", "Bramwell", "Cobble", "Denholm", "Emberly",
    "Fallow", "Glenrick", "Hartle", "Inchley", "Juniper", "Kilbride", "Loxley", "Millbeck", "Norland", "Orrin",
    "Penrose", "Quillan", "Redmere", "Sorrel", "Thackley", "Upton", "Vellum", "Wexcombe", "Yelland", "Zeal",
    "Arden", "Birchall", "Calloway", "Drummond", "Esk", "Fernhill", "Gorsey", "Hebden", "Ivel", "Jarrow",
    "Kendal", "Lusk", "Morwen", "Nidd", "Ottery", "Pickmere", "Quenby", "Rydal", "Stour", "Tarn",
    "Ulva", "Vane", "Wharfe", "Yeo", "Zetland", "Amble", "Blyth", "Colne", "Derwent", "Eden",
    "Frome", "Greta", "Hodder", "Irwell", "Kennet", "Lune", "Medlock", "Nene", "Ouse", "Parrett",
    "Roding", "Swale", "Teme", "Ure", "Wensum", "Yare",
)  # fmt: skip
_KINDS = (
    "kettle", "lamp", "toaster", "blanket", "backpack", "clock", "teapot", "heater", "mixer", "chair",
    "rug", "fan",
)  # fmt: skip


@dataclass(frozen=True)
class Product:
    """One catalogue product and its facts (dollars, months, days)."""

    index: int
    brand: str
    kind: str
    price: int
    delivery: int
    discount: int
    warranty: int
    returns: int

    @property
    def name(self) -> str:
        return f"{self.brand} {self.kind}"

    @property
    def slug(self) -> str:
        return f"{self.brand.lower()}-{self.kind}"

    @property
    def split(self) -> str:
        # Every brand has products on both sides, and every kind: (brand + kind) decides, not the brand alone.
        i, j = divmod(self.index, len(_KINDS))
        return "eval" if (i + j) % EVAL_EVERY == EVAL_EVERY - 1 else "train"

    def document(self) -> str:
        """The product's page in the store's knowledge base (one short chunk, so retrieval returns it whole)."""
        return (
            f"# {self.name}, {STORE} store\n"
            f"Price: {self.price} dollars.\n"
            f"Delivery: {self.delivery} dollars.\n"
            f"Member discount: {self.discount} dollars.\n"
            f"Warranty: {self.warranty} months.\n"
            f"Returns: within {self.returns} days.\n"
        )


def _catalogue() -> tuple[Product, ...]:
    rng = random.Random(CATALOGUE_SEED)
    out = []
    for i, brand in enumerate(_BRANDS):
        for j, kind in enumerate(_KINDS):
            # price - discount + delivery stays a two-digit sum: 30..69 - 10..19 + 10..29 <= 88.
            out.append(Product(i * len(_KINDS) + j, brand, kind, price=rng.randint(30, 69),
                               delivery=rng.randint(10, 29), discount=rng.randint(10, 19),
                               warranty=rng.choice((6, 12, 18, 24, 36, 48)), returns=rng.choice((14, 21, 28, 30, 45, 60))))
    return tuple(out)


PRODUCTS: tuple[Product, ...] = _catalogue()
_BY_NAME = {p.name.lower(): p for p in PRODUCTS}


def catalogue(split: str | None = None) -> list[Product]:
    """The products of ``split`` ("train" / "eval"), or all of them."""
    if split not in (None, "train", "eval"):
        raise ValueError(f"unknown split {split!r} (expected 'train' or 'eval')")
    return [p for p in PRODUCTS if split is None or p.split == split]


# --- tasks -----------------------------------------------------------------------------------------

# (kind, question templates, tier). Each kind names the facts it reads and how they combine.
_QUESTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "price": ("easy", ("How much does the {name} cost, in dollars?", "What is the price of the {name} in dollars?")),
    "warranty": ("easy", ("How many months of warranty does the {name} have?",
                          "For how many months is the {name} under warranty?")),
    "returns": ("easy", ("Within how many days can the {name} be returned?",
                         "How many days do you have to return the {name}?")),
    "delivered": ("medium", ("How much does the {name} cost with delivery, in dollars?",
                             "What do you pay in dollars for the {name} delivered to your door?")),
    "member": ("medium", ("How much does a member pay for the {name}, in dollars?",
                          "What is the member price of the {name} in dollars?")),
    "member_delivered": ("hard", ("How much does a member pay for the {name} with delivery, in dollars?",
                                  "What does a member pay in dollars for the {name} delivered to the door?")),
}
KINDS_BY_TIER = {t: tuple(k for k, (tier, _) in _QUESTIONS.items() if tier == t) for t in TIERS}


# The page's lines each kind reads, in the page's order (a sequential answer copies them, then computes).
_READS = {
    "price": ("Price",), "warranty": ("Warranty",), "returns": ("Returns",), "delivered": ("Price", "Delivery"),
    "member": ("Price", "Member discount"), "member_delivered": ("Price", "Member discount", "Delivery"),
}


def _facts(p: Product, kind: str) -> list[tuple[str, int]]:
    """The page lines a solution reads, as (line, value)."""
    lines = {ln.split(":")[0]: ln for ln in p.document().splitlines()[1:]}
    values = {"Price": p.price, "Delivery": p.delivery, "Member discount": p.discount, "Warranty": p.warranty,
              "Returns": p.returns}
    return [(lines[key], values[key]) for key in _READS[kind]]


def _steps(p: Product, kind: str) -> list[tuple[int, str, int, int]]:
    """The arithmetic of a kind as (a, op, b, result) facts, in reading order."""
    if kind == "delivered":
        return [(p.price, "+", p.delivery, p.price + p.delivery)]
    if kind == "member":
        return [(p.price, "-", p.discount, p.price - p.discount)]
    if kind == "member_delivered":
        net = p.price - p.discount
        return [(p.price, "-", p.discount, net), (net, "+", p.delivery, net + p.delivery)]
    return []


def _answer(p: Product, kind: str) -> int:
    steps = _steps(p, kind)
    return steps[-1][3] if steps else _facts(p, kind)[0][1]


def task_for(product: Product, kind: str, variant: int = 0) -> dict[str, Any]:
    """The task of ``kind`` about ``product`` (``variant`` picks the question's wording)."""
    if kind not in _QUESTIONS:
        raise ValueError(f"unknown question kind {kind!r} (expected one of {', '.join(_QUESTIONS)})")
    tier, templates = _QUESTIONS[kind]
    question = templates[variant % len(templates)].format(name=product.name)
    return {
        "task_id": f"kb-{product.slug}-{kind}-{variant % len(templates)}",
        "family": FAMILY,
        "question": question,
        "answer": str(_answer(product, kind)),
        "tier": tier,
        "product": product.name,
        "kind": kind,
        "split": product.split,
    }


def generate_task(rng: random.Random, tier: str, split: str = "train") -> dict[str, Any]:
    """A random task of ``tier`` about a product of ``split`` (the sim's pool draws these)."""
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r} (expected one of {', '.join(TIERS)})")
    product = rng.choice(catalogue(split))
    task = task_for(product, rng.choice(KINDS_BY_TIER[tier]), rng.randrange(2))
    task["transcript"] = render_sequential(task)
    return task


def _split_tasks(split: str) -> list[dict[str, Any]]:
    return [task_for(p, k, v) for p in catalogue(split) for k in _QUESTIONS for v in range(2)]


def train_split() -> list[dict[str, Any]]:
    """Every task (both wordings) about the training products: 864 products x 6 kinds x 2 wordings."""
    return _split_tasks("train")


EVAL_PRODUCTS = 24


def eval_split(per_tier: int | None = None, products: int = EVAL_PRODUCTS) -> list[dict[str, Any]]:
    """The held-out tasks: the first ``products`` held-out products (catalogue order), one wording per (product,
    kind), so 72 easy, 48 medium and 24 hard by default; ``per_tier`` caps each tier (the same every time)."""
    return heldout_slice(0, products, per_tier)


def select_split(per_tier: int | None = None, products: int = EVAL_PRODUCTS) -> list[dict[str, Any]]:
    """The selection split: tasks about the *next* ``products`` held-out products after :func:`eval_split`'s, so
    a stage that chooses between models on them (RL's keep check) never chooses on what the gates score."""
    return heldout_slice(EVAL_PRODUCTS, products, per_tier)


def heldout_slice(start: int, products: int, per_tier: int | None = None) -> list[dict[str, Any]]:
    """Tasks about held-out products ``start`` .. ``start + products`` (catalogue order), one wording per (product,
    kind). The gate's split starts at 0 and the selection split at 24; a benchmark reporting a recipe chosen on
    those takes a slice after both (48 on)."""
    held = catalogue("eval")[start:start + products]
    if len(held) < products:
        raise ValueError(f"the catalogue holds {len(catalogue('eval'))} held-out products; products {start} to "
                         f"{start + products} were asked for")
    return _capped([task_for(p, k, p.index) for p in held for k in _QUESTIONS], per_tier)


def _capped(tasks: list[dict[str, Any]], per_tier: int | None) -> list[dict[str, Any]]:
    if per_tier is None:
        return tasks
    out, seen = [], dict.fromkeys(TIERS, 0)
    for t in tasks:
        if seen[t["tier"]] < per_tier:
            out.append(t)
            seen[t["tier"]] += 1
    return out


def _product_of(task: dict[str, Any]) -> Product:
    name = task.get("product")
    if isinstance(name, str) and name.lower() in _BY_NAME:
        return _BY_NAME[name.lower()]
    found = product_in(str(task.get("question", "")))
    if found is None:
        raise ValueError(f"task {task.get('task_id')!r}: no catalogue product in {task.get('question')!r}")
    return found


_NAME_RE = re.compile(r"\b(" + "|".join(_BRANDS) + r") (" + "|".join(_KINDS) + r")\b", re.IGNORECASE)


def product_in(text: str) -> Product | None:
    """The catalogue product a question names (the last one named), or None."""
    found = _NAME_RE.findall(text)
    return _BY_NAME[f"{found[-1][0]} {found[-1][1]}".lower()] if found else None


def kind_of(question: str) -> str | None:
    """The question kind whose wording ``question`` uses, or None."""
    p = product_in(question)
    if p is None:
        return None
    q = question.strip()
    for kind, (_, templates) in _QUESTIONS.items():
        if any(t.format(name=p.name) == q for t in templates):
            return kind
    return None


def lookup(question: str) -> dict[str, Any] | None:
    """The task a question asks (any split, any wording), or None when it is not a catalogue question."""
    p, kind = product_in(question), kind_of(question)
    if p is None or kind is None:
        return None
    _, templates = _QUESTIONS[kind]
    variant = next(i for i, t in enumerate(templates) if t.format(name=p.name) == question.strip())
    return task_for(p, kind, variant)


def render_sequential(task: dict[str, Any]) -> str:
    """The single-path answer: the page lines read, the arithmetic, ``Final Answer: N``."""
    p, kind = _product_of(task), str(task["kind"])
    lines = [s for s, _ in _facts(p, kind)]
    lines += [f"{a} {op} {b} = {r}" for a, op, b, r in _steps(p, kind)]
    return "\n".join([*lines, f"Final Answer: {_answer(p, kind)}"])


def solution_paths(task: dict[str, Any]) -> list[str]:
    """Two different readings of the same facts: one copies the page's lines in order and computes; the other
    restates them in words and computes in the other order where it can."""
    p, kind = _product_of(task), str(task["kind"])
    answer = _answer(p, kind)
    facts = _facts(p, kind)
    first = [s for s, _ in facts] + [f"{a} {op} {b} = {r}" for a, op, b, r in _steps(p, kind)]
    k, price, dlv, off = p.kind, p.price, p.delivery, p.discount
    quoted = {
        "price": [f"The {k} costs {price} dollars."],
        "warranty": [f"The {k} is covered for {p.warranty} months."],
        "returns": [f"The {k} can go back within {p.returns} days."],
        "delivered": [f"Delivery is {dlv} and the {k} is {price}.", f"{dlv} + {price} = {dlv + price}"],
        "member": [f"The {k} is {price}, members save {off}.", f"{price} - {off} = {price - off}"],
        "member_delivered": [f"The {k} is {price}, delivery {dlv}, members save {off}.",
                             f"{price} + {dlv} = {price + dlv}", f"{price + dlv} - {off} = {answer}"],
    }[kind]
    return ["\n".join([*first, f"So the answer is {answer}."]), "\n".join([*quoted, f"So the answer is {answer}."])]


def parallel_trace(task: dict[str, Any]) -> str:
    """The Parallel answer a teacher who knows the catalogue writes (both paths, a summary, the answer)."""
    answer = _answer(_product_of(task), str(task["kind"]))
    block = pf.ParallelBlock(tuple(solution_paths(task)), f"Both paths give {answer}.")
    return pf.render(pf.Solution((block, "\n"), final_answer=str(answer)))


def answer_matches(task: dict[str, Any], answer: Any) -> bool:
    """Whether ``answer`` (a number or a transcript ending in ``Final Answer:``) is the task's answer."""
    text = str(answer)
    got = pf.extract_final_answer(text) if "final answer" in text.lower() else text
    return got is not None and pf.normalize_number(str(got)) == pf.normalize_number(str(task["answer"]))


# --- the documents ---------------------------------------------------------------------------------


def corpus_dir() -> Path:
    """Where the shipped store documents live (``pr1d/kb/catalogue``)."""
    return Path(__file__).resolve().parent.parent / "kb" / "catalogue"


def documents(products: Iterable[Product] = PRODUCTS) -> dict[str, str]:
    """File name -> text of each product's KB document."""
    return {f"{p.slug}.md": p.document() for p in products}


_README = (
    f"# {STORE} store catalogue\n\n"
    "The knowledge base of pr1's second task family, `kb_facts` (pr1d/tasks/kb_facts.py): one page per product of a\n"
    "fictional store, with its price, delivery fee, member discount, warranty and return window. The names are\n"
    "invented, so these pages are the only place the facts exist: a model answers the family's questions only with\n"
    "the page retrieved into its prompt. Generated by `python -m pr1d.tasks.kb_facts --write`; a test checks the\n"
    "committed files match. Written for pr1; free to reuse.\n"
)


def write_corpus(out: Path | None = None) -> list[Path]:
    """(Re)write the store documents and their README; returns the files written."""
    out = Path(out) if out is not None else corpus_dir()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in {**documents(), "README.md": _README}.items():
        path = out / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def _main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m pr1d.tasks.kb_facts", description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="(re)write pr1d/kb/catalogue from the catalogue")
    ap.add_argument("--out", type=Path, default=None, help="another folder to write the documents to")
    args = ap.parse_args(argv)
    if not args.write and args.out is None:
        ap.print_help()
        return 2
    files = write_corpus(args.out)
    print(f"wrote {len(files)} files to {files[0].parent}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
