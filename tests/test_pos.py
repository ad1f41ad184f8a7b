"""duilian.pos: each character takes its word's class, and parallelism is the share of positions that agree."""

import pytest

from duilian import pos


def test_classes_fold_jieba_tags_into_couplet_classes():
    got = pos.classes("春风送暖千家乐")
    assert len(got) == 7 and got[:2] == ("名", "名") and got[4] == "数"
    assert pos.classes("花开，春去")[2] is None  # punctuation has no class
    assert set(pos.CLASSES) == {"名", "动", "形", "数", "代", "副", "虚"}


def test_parallelism_counts_agreeing_positions():
    assert pos.parallelism("青山", "绿水") == pytest.approx(1.0)
    assert pos.parallelism("三山", "五岳") == pytest.approx(1.0)
    assert pos.parallelism("青山", "绿水长") is None  # different lengths
    assert pos.parallelism("，", "，") is None  # nothing counts
    assert pos.classes("海阔凭鱼跃") == (None,) * 5  # an idiom tagged whole: no class, not counted
    good = pos.parallelism("春风送暖千家乐", "喜气盈门万户欢")
    bad = pos.parallelism("春风送暖千家乐", "的了吗呢吧的了")
    assert good > 0.5 and bad == 0.0
