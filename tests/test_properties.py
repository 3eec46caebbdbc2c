"""Property tests: whatever a user types, the budget parser and the options answer with a valid
value or a UserError (one line), never another exception."""
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dimap_struct.errors import UserError
from dimap_struct.options import BenchOptions, CompressOptions, EvalOptions, FinetuneOptions
from dimap_struct.prune.budget import Budget

ORIGINAL = 4_500_000_000

budget_text = st.one_of(
    st.text(max_size=30),
    st.from_regex(r"\s*[-+]?[0-9]*\.?[0-9]*([eE][-+]?[0-9]{1,4})?\s*[KMGTkmgt]?\s*(MACs?)?\s*", fullmatch=True),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
)


@given(budget_text)
@settings(max_examples=400, deadline=None)
def test_any_budget_text_is_a_budget_or_a_user_error(text):
    try:
        macs = Budget.parse(text).target_macs(ORIGINAL)
    except UserError as err:
        assert "\n" not in str(err)
        return
    assert isinstance(macs, int) and 0 <= macs <= ORIGINAL


@given(budget_text)
@settings(max_examples=200, deadline=None)
def test_the_early_budget_check_agrees_with_the_parser(text):
    try:
        Budget.parse(text)
    except UserError:
        try:
            Budget.parse(text).target_macs(ORIGINAL)
        except UserError:
            return
        raise AssertionError(f"{text!r} refused early but accepted later")


values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.lists(st.one_of(st.integers(-5, 50), st.text(max_size=5)), max_size=4),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def _options_case(cls):
    names = [f.name for f in cls.specs()] + ["not_an_option", "flop"]
    return st.dictionaries(st.sampled_from(names), values, max_size=4)


@given(st.sampled_from([CompressOptions, FinetuneOptions, EvalOptions, BenchOptions]), st.data())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_options_are_valid_or_a_user_error(cls, data):
    given_values = data.draw(_options_case(cls))
    try:
        options = cls.make(given_values)
    except UserError as err:
        assert "\n" not in str(err)
        return
    for f in cls.specs():  # what was accepted is really within the declared ranges
        value = getattr(options, f.name)
        spec = f.metadata["spec"]
        if isinstance(value, float):
            assert math.isfinite(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            assert spec.minimum is None or value >= spec.minimum
            assert spec.maximum is None or value <= spec.maximum
    assert cls.make(options.recipe()).recipe() == options.recipe()  # a recipe reproduces its options


@given(st.integers(min_value=1, max_value=10**12 - 1))
def test_an_absolute_budget_reads_back_as_the_same_count(macs):
    assert Budget.parse(Budget.absolute(macs).text).target_macs(10**12) == macs
