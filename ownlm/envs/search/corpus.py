"""Documents and questions of the search env: a seeded fictional corpus, or the user's own files.

Synthetic (the default): fictional companies and their founders (names from Faker and a seeded
syllable generator, so a model cannot know the answers without searching). One short document per
company (product, founding year, founder, headquarters city) and per founder (birth year, birth
city). Questions ask one fact (one lookup) or a founder's fact by company name ("In which city
was the founder of X born?": two lookups). Each company's questions and its founder's all go to
one split, so train and test share no entity.

Your own: `load_documents(path)` reads a JSONL file of {"title", "text"} (optional "id") or a
directory of .txt/.md files (title = file name); `load_questions(path)` reads a JSONL file of
{"question", "answer", "doc_id" (the document holding the answer), "split" ("train"/"test")}.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from ownlm.envs.base import Task
from ownlm.errors import DataError
from ownlm.jsonl import read_jsonl


@dataclass(frozen=True)
class Document:
    """One searchable document."""

    id: int
    title: str
    text: str


_SYLLABLES = [
    "vel", "mor", "zan", "tri", "kor", "lum", "dax", "bri", "sol", "quen", "var", "nix",
    "pel", "tor", "ash", "fen", "gal", "hy", "jor", "kel", "mi", "nov", "or", "rav",
]  # fmt: skip
_SUFFIXES = ["Labs", "Systems", "Works", "Motors", "Foods", "Group", "Industries", "Studios"]
_PRODUCTS = [
    "solar panels", "running shoes", "coffee machines", "electric bikes", "board games",
    "garden tools", "smart watches", "frozen pizza", "paint", "drones", "office chairs",
    "toothpaste", "guitars", "tents", "headphones", "vitamins", "skateboards", "batteries",
    "bread", "cameras", "glue", "kites", "soap", "lamps",
]  # fmt: skip


def build_synthetic(
    seed: int, n_companies: int, test_fraction: float
) -> tuple[list[Document], dict[str, list[Task]]]:
    """(documents, {"train": tasks, "test": tasks}) of a seeded fictional corpus."""
    from faker import Faker

    rng = random.Random(seed)
    fake = Faker("en_US")
    fake.seed_instance(seed)
    cities = sorted({fake.city() for _ in range(80)})
    names: set[str] = set()
    people: set[str] = set()
    entries = []
    while len(entries) < n_companies:
        stem = "".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((2, 3)))).capitalize()
        name = f"{stem} {rng.choice(_SUFFIXES)}"
        person = f"{fake.first_name()} {fake.last_name()}"
        if name in names or person in people or stem.lower() in person.lower():
            continue
        names.add(name)
        people.add(person)
        entries.append(
            {
                "company": name,
                "product": rng.choice(_PRODUCTS),
                "year": rng.randint(1900, 2020),
                "hq": rng.choice(cities),
                "founder": person,
                "byear": rng.randint(1850, 1995),
                "bcity": rng.choice(cities),
            }
        )
    # doc ids are shuffled so a company's and its founder's documents are not neighbours
    ids = list(range(2 * n_companies))
    rng.shuffle(ids)
    docs: list[Document] = []
    splits: dict[str, list[Task]] = {"train": [], "test": []}
    n_test = round(n_companies * test_fraction)
    for i, e in enumerate(entries):
        c_id, p_id = ids[2 * i], ids[2 * i + 1]
        docs.append(
            Document(
                c_id,
                e["company"],
                f"{e['company']} is a company that makes {e['product']}. It was founded in "
                f"{e['year']} by {e['founder']}. Its headquarters are in {e['hq']}.",
            )
        )
        docs.append(
            Document(
                p_id,
                e["founder"],
                f"{e['founder']} is a business founder, born in {e['byear']} in {e['bcity']}. "
                f"{e['founder'].split()[0]} founded {e['company']}.",
            )
        )
        c, p = e["company"], e["founder"]
        qa = [
            ("year", f"In what year was {c} founded?", e["year"], c_id, [c]),
            ("hq", f"In which city are the headquarters of {c}?", e["hq"], c_id, [c]),
            ("founder", f"Who founded {c}?", p, c_id, [c]),
            ("product", f"What does {c} make?", e["product"], c_id, [c]),
            ("byear", f"In what year was {p} born?", e["byear"], p_id, [p]),
            ("bcity", f"In which city was {p} born?", e["bcity"], p_id, [p]),
            ("founder_bcity", f"In which city was the founder of {c} born?", e["bcity"], p_id,
             [c, p]),
            ("founder_byear", f"In what year was the founder of {c} born?", e["byear"], p_id,
             [c, p]),
        ]  # fmt: skip
        split = "test" if i < n_test else "train"
        for kind, question, answer, doc_id, queries in qa:
            splits[split].append(
                Task(
                    id=f"search/{split}/{i}/{kind}",
                    question=question,
                    answer=str(answer),
                    metadata={"doc_id": doc_id, "kind": kind, "queries": queries},
                )
            )
    docs.sort(key=lambda d: d.id)
    return docs, splits


def load_documents(path: str | Path) -> list[Document]:
    """Documents from a JSONL file ({"title", "text"}, optional int "id") or a directory of
    .txt/.md files (title = file stem); ids default to the order read."""
    p = Path(path)
    docs: list[Document] = []
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix in (".txt", ".md") and f.is_file())
        for i, f in enumerate(files):
            docs.append(Document(i, f.stem, f.read_text(encoding="utf-8").strip()))
    elif p.is_file():
        for number, obj in read_jsonl(p, hint="pass a JSONL file or a folder of .txt"):
            if not isinstance(obj.get("text"), str):
                raise DataError(f'{p} line {number}: a document needs a string "text"')
            doc_id = obj.get("id", len(docs))
            if not isinstance(doc_id, int):
                raise DataError(f'{p} line {number}: "id" must be an integer, got {doc_id!r}')
            docs.append(Document(doc_id, str(obj.get("title", f"doc {doc_id}")), obj["text"]))
    else:
        raise DataError(f"{p}: no such file or directory; pass a JSONL file or a folder of .txt")
    if not docs:
        raise DataError(f"{p}: no documents found; add .txt/.md files or JSONL rows")
    if len({d.id for d in docs}) != len(docs):
        raise DataError(f"{p}: document ids repeat; give each document a distinct id")
    return docs


def load_questions(path: str | Path) -> dict[str, list[Task]]:
    """Questions from JSONL rows {"question", "answer", "doc_id", "split"} by split."""
    splits: dict[str, list[Task]] = {"train": [], "test": []}
    for number, obj in read_jsonl(path, hint="pass a JSONL file of questions"):
        split = obj.get("split", "train")
        if split not in splits:
            raise DataError(f"{path} line {number}: split must be 'train' or 'test', got {split}")
        if not isinstance(obj.get("question"), str) or "answer" not in obj:
            raise DataError(f'{path} line {number}: a question needs "question" and "answer"')
        meta = {"doc_id": obj.get("doc_id"), "kind": "user", "queries": [obj["question"]]}
        splits[split].append(
            Task(
                id=f"search/{split}/{number}",
                question=obj["question"],
                answer=str(obj["answer"]),
                metadata=meta,
            )
        )
    return splits
