"""A paper's derived links (newsletter/links.py)."""

from __future__ import annotations

from newsletter.links import PaperLinks, paper_links
from tests.factories import make_paper


def test_arxiv_id_gives_pdf_and_hugging_face_page() -> None:
    paper = make_paper(1, "T", arxiv_id="2509.04664v2")
    assert paper_links(paper) == PaperLinks(
        pdf="https://arxiv.org/pdf/2509.04664",
        huggingface="https://huggingface.co/papers/2509.04664",
        code=None,
    )


def test_old_style_id_has_a_pdf_but_no_hugging_face_page() -> None:
    paper = make_paper(1, "T", arxiv_id="cs/0112017")
    assert paper_links(paper) == PaperLinks(pdf="https://arxiv.org/pdf/cs/0112017")


def test_no_or_odd_id_gives_no_derived_link() -> None:
    assert paper_links(make_paper(1, "T")) == PaperLinks()
    assert paper_links(make_paper(2, "T", arxiv_id="javascript:alert(1)")) == PaperLinks()


def test_code_link_is_the_first_repository_the_abstract_names() -> None:
    paper = make_paper(
        1,
        "T",
        abstract="We release it. Code is available at https://github.com/org/repo-name. "
        "See also https://gitlab.com/other/x.",
    )
    assert paper_links(paper).code == "https://github.com/org/repo-name"
    plain = make_paper(2, "T", abstract="Our project page is https://example.org/x.")
    assert paper_links(plain).code is None
