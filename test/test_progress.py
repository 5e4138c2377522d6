import io

from dff_ros.progress import Progress


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    p = Progress(100, "train", stream=out, interval=0.0)
    p.update(50, loss=0.25)
    p.update(50, loss=0.125)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in out.getvalue()
    assert " 50.0% 50/100" in lines[0] and "loss=0.25" in lines[0]
    assert "100.0% 100/100" in lines[1] and "loss=0.125" in lines[1]


def test_live_bar_on_a_terminal():
    out = FakeTTY()
    p = Progress(4, "train", stream=out)
    p.update(4, epoch=1)
    text = out.getvalue()
    assert text.startswith("\r########################") and text.endswith("\n")
    assert "epoch=1" in text


def test_disabled_writes_nothing():
    out = io.StringIO()
    Progress(10, stream=out, interval=0.0, enabled=False).update(10)
    assert out.getvalue() == ""


def test_listener_hears_at_most_once_a_second_and_the_end_even_when_disabled():
    heard = []
    p = Progress(100, stream=io.StringIO(), enabled=False, listener=lambda pr: heard.append(pr.done))
    for _ in range(10):
        p.update(5)           # all within a second: only the first is heard
    assert heard == [5]
    p.update(50)              # the end is always heard
    assert heard == [5, 100] and p.fraction == 1.0
    elapsed, eta = p.elapsed_eta()
    assert elapsed >= 0 and eta == 0.0
