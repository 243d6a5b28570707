"""One number rule: GSM-lite's checker, the simulator's critic and the Parallel format canonicalise numbers alike.

`pr1d.data.parallel_format.normalize_number` is the reference; GSM-lite (which finds the number in loose
text) and the simulator (which reads a transcript's last ``Final Answer:``) only locate the number and
hand it over, so a record the builder keeps, a reward and the critic's verdict can never disagree on it.
"""

from __future__ import annotations

import pytest

from pr1d.data.parallel_format import normalize_number
from pr1d.evaluate import gsm_lite
from pr1d.sim.tasks import normalize_answer

# Plain answers: all three readers give the reference's canonical form.
PLAIN = [
    ("68", "68"), ("068", "68"), ("68.", "68"), ("68.0", "68"), ("68.50", "68.5"), ("1,234", "1234"),
    ("$1,234.00", "1234"), ("-5", "-5"), ("−5", "-5"), ("-0", "0"), ("0.25", "0.25"), ("-$3.10", "-3.1"),
]


@pytest.mark.parametrize(("raw", "canonical"), PLAIN)
def test_plain_answers_agree(raw, canonical):
    assert normalize_number(raw) == canonical
    assert normalize_answer(raw) == canonical
    assert gsm_lite.extract_answer(f"Final Answer: {raw}") == canonical
    assert gsm_lite.check_answer(raw, canonical) and gsm_lite.check_answer(f"So...\nFinal Answer: {raw}", canonical)


@pytest.mark.parametrize(("raw", "reference", "sim", "gsm"), [
    # Each module keeps its documented reading; only the canonical form is shared.
    ("51 apples.", None, None, "51"),  # GSM-lite finds the number in loose text; the others want a number
    ("**51**", None, None, "51"),
    ("sixty-eight", None, None, None),
    ("", None, None, None),
])
def test_each_module_keeps_its_reading(raw, reference, sim, gsm):
    assert normalize_number(raw) == reference
    assert normalize_answer(raw) == sim
    assert gsm_lite.extract_answer(f"Final Answer: {raw}") == gsm


def test_final_answer_marker_case():
    text = "23 + 45 = 68\nfinal answer: 68"
    assert gsm_lite.extract_answer(text) == "68" and normalize_answer(text) == "68"  # lenient readers
    from pr1d.data.parallel_format import extract_final_answer

    assert extract_final_answer(text) is None  # the format's marker is exact, as the tokenizer sees it
