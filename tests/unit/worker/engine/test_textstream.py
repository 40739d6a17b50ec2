"""Text a client may see, as soon as it is final: stop strings and partial UTF-8 held back."""

from __future__ import annotations

from worker.engine.textstream import TextStream


def test_without_stop_strings_text_passes_through_at_once():
    stream = TextStream()
    assert stream.feed(b"Hello") == "Hello"
    assert stream.feed(b", world") == ", world"
    assert stream.finish() == ""
    assert not stream.stopped


def test_a_partial_utf8_character_is_held_back_until_complete():
    stream = TextStream()
    assert stream.feed(b"caf\xc3") == "caf"
    assert stream.feed(b"\xa9!") == "\u00e9!"
    euro = "\u20ac".encode()  # three bytes, one per piece
    assert [stream.feed(euro[i : i + 1]) for i in range(3)] == ["", "", "\u20ac"]


def test_finish_flushes_an_unfinished_character_as_a_replacement():
    stream = TextStream()
    assert stream.feed(b"ok\xe2\x82") == "ok"
    assert stream.finish() == "\ufffd"


def test_a_stop_string_split_across_pieces_is_found_and_not_sent():
    stream = TextStream(["END"])
    assert stream.feed(b"the E") == "the "
    assert stream.feed(b"N") == ""
    assert stream.feed(b"D and more") == ""
    assert stream.stopped
    assert stream.feed(b"after") == ""
    assert stream.finish() == ""


def test_held_text_is_released_once_it_cannot_become_a_stop_string():
    stream = TextStream(["END"])
    assert stream.feed(b"E") == ""
    assert stream.feed(b"N") == ""
    assert stream.feed(b"x") == "ENx"
    assert not stream.stopped


def test_only_the_longest_possible_start_of_a_stop_string_is_held():
    stream = TextStream(["abcd", "cx"])
    assert stream.feed(b"zzabc") == "zz"  # "abc" could become "abcd"
    assert stream.feed(b"e") == "abce"


def test_the_earliest_stop_string_in_the_text_wins():
    stream = TextStream(["world", "lo"])
    assert stream.feed(b"hello world") == "hel"
    assert stream.stopped and stream.matched == "lo"


def test_the_stop_string_that_matched_is_named_and_a_tie_goes_to_the_first_listed():
    unmatched = TextStream(["ab", "b"])
    assert unmatched.feed(b"xa") == "x"
    assert unmatched.finish() == "a"
    assert not unmatched.stopped and unmatched.matched == ""
    tied = TextStream(["b", "bc"])
    assert tied.feed(b"abc") == "a"
    assert tied.matched == "b"


def test_a_stop_string_can_end_inside_a_multibyte_character():
    stream = TextStream(["\u00e9t\u00e9"])
    assert stream.feed(b"un \xc3") == "un "
    assert stream.feed(b"\xa9") == ""  # "é" may begin the stop string
    assert stream.feed(b"t\xc3") == ""
    assert stream.feed(b"\xa9 chaud") == ""
    assert stream.stopped


def test_finish_releases_held_text_when_generation_ends_without_a_stop():
    stream = TextStream(["STOP"])
    assert stream.feed(b"almost ST") == "almost "
    assert stream.finish() == "ST"
    assert not stream.stopped
