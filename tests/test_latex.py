"""Inline LaTeX made readable (newsletter/latex.py): exact outputs for text and HTML."""

from __future__ import annotations

import pytest

from newsletter.latex import latex_to_html, latex_to_text

CASES = [
    # (raw, text, html)
    ("PaccMann$^{RL}$: drugs", "PaccMann^RL: drugs", "PaccMann<sup>RL</sup>: drugs"),
    ("improves 14\\% over", "improves 14% over", "improves 14% over"),
    ("$L_2$ loss", "L₂ loss", "L<sub>2</sub> loss"),
    ("x$^2$ and $x_{i}^{2}$", "x² and x_i²", "x<sup>2</sup> and x<sub>i</sub><sup>2</sup>"),
    ("$10^{-3}$ lr", "10⁻³ lr", "10<sup>-3</sup> lr"),
    ("$\\alpha$-divergence", "α-divergence", "α-divergence"),
    ("$\\mathcal{O}(n \\log n)$ time", "𝒪(n log n) time", "𝒪(n log n) time"),
    ("GPT-4$^\\dagger$", "GPT-4^†", "GPT-4<sup>†</sup>"),
    ("\\textbf{bold} A \\& B", "bold A & B", "bold A &amp; B"),
    ("costs $5 and $ 10", "costs $5 and $ 10", "costs $5 and $ 10"),
    ("no latex <b>here</b>", "no latex <b>here</b>", "no latex &lt;b&gt;here&lt;/b&gt;"),
    ("<script>$a<b$", "<script>a<b", "&lt;script&gt;a&lt;b"),
    ("$$display$$ stays", "$$display$$ stays", "$$display$$ stays"),
]


@pytest.mark.parametrize(("raw", "text", "html"), CASES)
def test_inline_latex_as_text_and_html(raw: str, text: str, html: str) -> None:
    assert latex_to_text(raw) == text
    assert latex_to_html(raw) == html


def test_no_backslash_or_dollar_is_left_in_converted_math() -> None:
    raw = "Scaling $\\beta$ by $\\sqrt{d}$ gives 3\\% and $\\mathbb{R}^{n}$"
    assert "\\" not in latex_to_text(raw) and "$" not in latex_to_text(raw)
    assert "\\" not in latex_to_html(raw) and "$" not in latex_to_html(raw)
