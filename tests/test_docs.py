"""Cross-references into docs/ name files and sections that exist, the Python names the
documents give resolve, and the image guards' timings are those of the benchmark runs
the documents cite.

Code, benchmarks and documents point readers at `docs/<page>.md, "<section title>"`;
a section renamed or moved to another page would leave those pointers dangling.
"""

import functools
import importlib
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = ("README.md", "ofrnn_tf", "benchmarks", "serving", "scripts", "tests", "docs",
           "train.py", "export.py", "predict.py")
REFERENCE = re.compile(r"(docs/[\w-]+\.md)`?(?:,\s+\"([^\"]+)\")?")
PYTHON_NAME = re.compile(r"\bofrnn_tf(?:\.[A-Za-z_]\w*)+")
DOCUMENTS = ("README.md", "docs", "serving/README.md")


def _headings(page: pathlib.Path) -> set[str]:
    return {re.sub(r"^#+\s*", "", line).strip()
            for line in page.read_text(encoding="utf-8").splitlines() if line.startswith("#")}


def _source_files():
    for name in SOURCES:
        path = ROOT / name
        if path.is_file():
            yield path
        else:
            yield from (p for p in path.rglob("*") if p.suffix in (".py", ".md", ".sh"))


def _references():
    for path in _source_files():
        if path == pathlib.Path(__file__).resolve():
            continue  # its own example references are not pointers
        for match in REFERENCE.finditer(path.read_text(encoding="utf-8")):
            title = re.sub(r"\s+", " ", match.group(2)) if match.group(2) else None
            yield path.relative_to(ROOT), match.group(1), title


def test_the_pattern_finds_references_with_and_without_a_title():
    text = 'see docs/model.md, "Label\n  context" and `docs/serving.md`.'
    found = [(m.group(1), m.group(2)) for m in REFERENCE.finditer(text)]
    assert found == [("docs/model.md", "Label\n  context"), ("docs/serving.md", None)]


def test_every_reference_into_docs_names_a_page_and_section_that_exist():
    references = list(_references())
    assert len(references) > 20, "the scan found too few references to be looking at the repo"
    headings = {}
    broken = []
    for source, page, title in references:
        page_path = ROOT / page
        if not page_path.is_file():
            broken.append(f"{source}: {page} does not exist")
            continue
        if title is None:
            continue
        known = headings.setdefault(page, _headings(page_path))
        # A reference may quote the start of a long title ("Ablations" for "Ablations (the
        # rows ...)").
        if not any(heading.startswith(title) for heading in known):
            broken.append(f'{source}: {page} has no section "{title}"')
    if broken:
        pytest.fail("\n".join(broken))


def test_the_readme_lists_every_page_of_docs_and_every_module_of_the_package():
    """A page added to docs/ is listed in the README's "Documentation", and a module of
    `ofrnn_tf` is named by its file name in the package's part of "Layout" (one in a
    folder two levels down, as ``features/backbones/``, by its folder): otherwise a reader
    never finds it."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    listed = readme[readme.index("## Documentation"):readme.index("## Layout")]
    layout = readme[readme.index("## Layout"):]
    package = layout[layout.index("ofrnn_tf/\n"):layout.index("\ntrain.py ")]
    assert [page.name for page in sorted((ROOT / "docs").glob("*.md"))
            if f"`docs/{page.name}`" not in listed] == []
    modules = [path.relative_to(ROOT) for path in sorted((ROOT / "ofrnn_tf").rglob("*.py"))
               if path.name != "__init__.py"]
    assert len(modules) > 40, "the scan found too few modules to be looking at the package"
    named = lambda text: re.search(rf"(?<![\w.]){re.escape(text)}(?![\w])", package)
    assert [str(path) for path in modules if not named(path.name)
            and not (len(path.parts) > 3 and named(path.parts[-2] + "/"))] == []

def _resolves(name: str) -> bool:
    """Whether `name` is reached as a reader would: `import` of its longest module prefix,
    then attribute access from the top package (a submodule's attribute is its parent's
    name for it, which a re-exported function of the same name replaces)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        try:
            importlib.import_module(".".join(parts[:end]))
            break
        except ImportError:
            continue
    try:
        functools.reduce(getattr, parts[1:], importlib.import_module(parts[0]))
    except AttributeError:
        return False
    return True


def test_every_python_name_the_documents_give_resolves():
    names = {(path.relative_to(ROOT), name)
             for document in DOCUMENTS
             for path in ([ROOT / document] if document.endswith(".md")
                          else sorted((ROOT / document).glob("*.md")))
             for name in PYTHON_NAME.findall(path.read_text(encoding="utf-8"))}
    assert len(names) > 5, "the scan found too few names to be looking at the documents"
    broken = [f"{source}: {name}" for source, name in sorted(names) if not _resolves(name)]
    assert not broken, "\n".join(broken)


# The image guards' timings the documents give: those of bench_image_guards.py's runs.
GUARDS_RESULTS = "What the served model's header guards cost"
RUN_DATE = re.compile(r"20\d\d-\d\d-\d\d \d\d:\d\d")
TIMING = re.compile(r"(\d[\d,]*(?:\.\d+)?)(?= ms\b| s\b| against )")


def _guards_rows(dates: set[str]) -> list[list[float]]:
    """The numbers of each table row of the RESULTS.md sections `GUARDS_RESULTS` of those
    run dates."""
    rows = []
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    for section in re.split(r"^## ", results, flags=re.M):
        run = RUN_DATE.search(section)
        if section.startswith(GUARDS_RESULTS + "\n") and run and run.group() in dates:
            rows += [[float(n.replace(",", "")) for n in re.findall(r"-?\d[\d,]*\.?\d*", row)]
                     for row in section.splitlines() if row.startswith("| ")]
    return rows


def _timings_not_in_cited_runs(text: str) -> list[str]:
    """The timings of `text` (ms, or s) that are neither a value of a guards run that
    `text` cites by its date nor the difference of two values of one row, as rounded."""
    rows = _guards_rows(set(RUN_DATE.findall(text)))
    missing = []
    for match in TIMING.finditer(text):
        written = match.group(1).replace(",", "")
        places = len(written.partition(".")[2])
        value = float(written)
        scale = 1000 if text.startswith(" s", match.end()) else 1
        if not any(round(v / scale, places) == value or round(a - b, places) == value
                   for row in rows for v in row for a in row for b in row):
            missing.append(f"{written}{text[match.end():match.end() + 3]}")
    return missing


def test_the_image_guards_timings_are_those_of_the_benchmark_runs_the_documents_cite():
    """docs/image_guards.md's measurements, and docs/serving.md's paragraphs on them, give
    the RESULTS.md runs they come from (their date), and only those runs' numbers."""
    page = (ROOT / "docs" / "image_guards.md").read_text(encoding="utf-8")
    serving = (ROOT / "docs" / "serving.md").read_text(encoding="utf-8")
    texts = [re.sub(r"\s+", " ", text) for text in [
        page[page.index("## Cost"):page.index("### How the code stays cheap")],
        *serving.split("\n\n")]]
    texts = [text for text in texts if "bench_image_guards" in text or GUARDS_RESULTS in text]
    assert len(texts) >= 2, "the scan found no paragraph of docs/serving.md on the guards' cost"
    for text in texts:
        assert _guards_rows(set(RUN_DATE.findall(text))), f"no run of RESULTS.md cited: {text}"
        assert not _timings_not_in_cited_runs(text), _timings_not_in_cited_runs(text)
