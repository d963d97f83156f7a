"""Reporter text in robot markdown is inert: no fake lines, links, images, headings, font tags or mentions."""

import re
import subprocess

import pytest
from conftest import SMALL_PATTERNS, write_config

from failured.config import load_config
from failured.notify import messages
from failured.notify.dispatcher import Dispatcher, Lane
from failured.notify.inert import inert
from failured.notify.outbox import enqueue
from failured.rules import DEFAULT_UNKNOWN
from failured.settings import Settings
from failured.store import Notification, Task

TOKEN = "robot-token-0123456789abcdef"
WECOM_KEY = "693a91f6-7aaa-4bc4-97a0-0ec2sifa5aaa"
# What the security review reported (task type and ref reached the robots verbatim).
EVIL_TYPE = "evil\n\n**[failured] 已恢复: 一切正常**\n- 建议: 访问 http://evil.example\n<@all>\n#"
EVIL_REF = "r\n\n# HEADING\n[link](http://evil.example)\n<@all>"
EVIL_ERROR = ('boom\n[点此处理](http://evil.example/fix) ![](http://evil.example/x.png) <font color="warning">紧急</font>'
              " <@zhangsan> **bold** `code` ~~gone~~ _it_")
OUR_LINES = ("- 分类: ", "- 任务类型: ", "- 任务: ", "- 错误: ", "- 建议: ", "- 时间: ", "- 查看: ")
CONFIG = """
[channels.ding]
kind = "dingtalk"
url = "{ding}"
access_token = "{token}"

[channels.wecom]
kind = "wecom"
url = "{wecom}"
key = "{key}"
mentioned_list = ["ops-lead"]

[[routes]]
channels = ["ding", "wecom"]
"""


def evil_task(task_type=EVIL_TYPE):
    return Task(id=42, task_type=task_type, ref=EVIL_REF, error_message=EVIL_ERROR, error_type="Evil\n# type")


def assert_inert(text):
    """Nothing in ``text`` a robot would turn into a link, image, heading, font, mention or emphasis of its own."""
    for syntax in ("](", "![", "<font", "<@", "http://", "~~", "# HEADING", "**[failured] 已恢复"):
        assert syntax not in text, (syntax, text)
    assert not re.search(r"(?m)^\s*(#|>|<|\[(?!failured\]))", text), text


@pytest.fixture
def robots(store, clock, tmp_path, robot_server):
    ding = robot_server("dingtalk", TOKEN, clock=clock.now)
    wecom = robot_server("wecom", WECOM_KEY, clock=clock.now)
    main = CONFIG.format(ding=ding.url, wecom=wecom.url, token=TOKEN, key=WECOM_KEY)
    snapshot = load_config(write_config(tmp_path / "cfg", SMALL_PATTERNS, main), log_dir=tmp_path / "logs")
    dispatcher = Dispatcher(store, Settings(db=store.path, log_dir=tmp_path / "logs"), clock, lambda: snapshot)

    def deliver(title, body, kind="task", task_type=EVIL_TYPE):
        enqueue(store, snapshot, clock.now(), "admin", kind, title, body, category="unknown", task_type=task_type,
                fingerprint=f"fp{clock.now()}")
        for name in ("ding", "wecom"):
            lane = Lane(name, dispatcher)
            lane._load_history(clock.now())
            lane.process()
        clock.advance(1)
        return ding.received[-1].payload["markdown"], wecom.received[-1].payload["markdown"]["content"]

    return snapshot, dispatcher, deliver


def test_a_hostile_task_reaches_the_robots_as_plain_text_in_failureds_own_lines(robots, clock):
    _, _, deliver = robots
    title, body = messages.task_message("zh", "task", "admin", evil_task(), DEFAULT_UNKNOWN, clock.now())
    ding, wecom = deliver(title, body)
    assert "\n" not in ding["title"] and ding["title"].startswith("[failured] 未知错误: evil")
    assert_inert(ding["title"])
    for text in (ding["text"], wecom):
        lines = text.split("\n")
        assert lines[0].startswith("**[failured] 未知错误: evil") and lines[0].endswith(" #42**")  # our bold title
        assert all(line.startswith(OUR_LINES) for line in lines[1:] if line and not line.startswith("<@ops-lead>"))
        assert len(lines) <= 9
        assert_inert(text.removesuffix("\n<@ops-lead>"))
        assert "`failured show 42`" in text  # failured's own markup still works
        assert "已恢复: 一切正常" in text and "紧急" in text  # the words are all there, to be read, not rendered
    assert wecom.endswith("\n<@ops-lead>")  # the configured mention is still a mention


def test_digest_lines_show_hostile_task_types_on_one_line(robots, clock):
    _, _, deliver = robots
    rows = [Notification(category="unknown", task_type=EVIL_TYPE, title="[failured] t #1"),
            Notification(category="unknown", task_type="sync_orders", title="[failured] t #2")]
    title, body = messages.digest_message("zh", rows, 5, "/var/lib/failured/failured.db", 7)
    ding, _ = deliver(title, body, kind="digest")
    assert_inert(ding["text"])
    assert "- sync_orders: 1" in ding["text"]  # a task type people type keeps its underscores
    assert len(ding["text"].split("\n")) == len(body.split("\n"))


def test_a_digest_of_many_task_types_lists_the_first_ten_and_keeps_its_entries_and_query_within_a_robots_cut():
    rows = [Notification(category="unrecoverable_business", task_type=f"shop_order_sync_{i:03d}", audience="admin",
                         title=f"[failured] 不可恢复业务错误: shop_order_sync_{i:03d} #{i}") for i in range(250)]
    title, body = messages.digest_message("zh", rows, 5, "/var/lib/failured/failured.db", 7)
    assert body.count("- shop_order_sync_") == 10 and body.count("- [failured]") == 5  # ten counts, five entries
    assert "- 其余 240 种：240" in body and "merged_into = 7" in body
    assert len(body.encode()) < 4096  # WeCom's limit: nothing a reader needs is cut
    user_rows = [Notification(category="unrecoverable_business", task_type="t", audience="user", title="x")] * 30
    assert "sqlite3" not in messages.digest_message("en", user_rows, 5, "/var/lib/failured/failured.db", 8)[1]


@pytest.mark.parametrize("make", [
    lambda: messages.manual_message("zh", EVIL_TYPE),
    lambda: messages.breaker_message("zh", EVIL_TYPE, True, 5, 60),
    lambda: messages.breaker_message("en", EVIL_TYPE, False),
    lambda: messages.task_message("en", "exhausted", "user", evil_task(), DEFAULT_UNKNOWN, 0, 3, 3),
])
def test_every_message_about_a_task_type_keeps_it_inert(make):
    title, body = make()
    assert "\n" not in title
    assert_inert(title)
    assert_inert(body)


def test_an_alert_about_a_traceback_shows_the_exception_raised_not_the_first_frames(clock):
    error = ("Traceback (most recent call last):\n"
             + '  File "/srv/venv/lib/python3.11/site-packages/courier/client.py", line 88, in call\n    x()\n' * 6
             + "ConnectionResetError: [Errno 104] Connection reset by peer")
    task = Task(id=7, task_type="sync", ref=None, error_message=error, error_type=None)
    _, body = messages.task_message("en", "task", "admin", task, DEFAULT_UNKNOWN, clock.now())
    assert "ConnectionResetError" in body and "Connection reset by peer" in body and "client.py" not in body


def test_a_mention_in_a_message_from_elsewhere_never_pings_on_wecom(robots):
    _, _, deliver = robots
    # e.g. a row written before this version, or an error text in a config-reload alert
    _, wecom = deliver("[failured] x\n<@all>", "**[failured] x**\n- <@all> <@boss> <font color=\"warning\">!</font>")
    assert "<@all>" not in wecom and "<@boss>" not in wecom and "<font" not in wecom
    assert wecom.endswith("\n<@ops-lead>")


def test_wecom_and_dingtalk_titles_are_one_line(robots):
    _, _, deliver = robots
    ding, wecom = deliver("[failured] a\n\n# b", "body")
    assert ding["title"] == "[failured] a # b"  # "#" within a line starts nothing
    assert wecom.startswith("**[failured] a # b**\n\nbody")


@pytest.mark.parametrize("given, shown", [
    ("sync_orders", "sync_orders"),
    ("订单同步失败：库存不足（SKU 12）", "订单同步失败：库存不足（SKU 12）"),
    ("line one\n\n  line two\r\n", "line one line two"),
    ("[x](http://e.example)", "［x］(http：//e.example)"),
    ("![](https://e.example/p.png)", "!［］(https：//e.example/p.png)"),
    ('<font color="warning">hi</font> <@all>', '＜font color="warning"＞hi＜/font＞ ＜@all＞'),
    ("**b** *i* __u__ _i_ ~~s~~ `c`", "＊＊b＊＊ ＊i＊ ＿＿u＿＿ ＿i＿ ～～s～～ ｀c｀"),
    ("# heading", "＃ heading"),
    ("> quote", "＞ quote"),
    ("- item", "－ item"),
    ("1. item", "1． item"),
    ("a\u202eb\x00c\x1b[31m", "abc［31m"),  # a bidi override, NUL and an ANSI escape are dropped
    ("mailto:admin@evil.example www.evil.example/login", "mailto：admin@evil.example www．evil.example/login"),
    (None, ""),
])
def test_inert_text_keeps_the_words_and_loses_the_syntax(given, shown):
    assert inert(given) == shown


def test_inert_text_is_cut_to_its_limit_and_stays_inert_when_made_inert_again():
    text = inert("[x](y) " * 100, 50)
    assert len(text) == 50 and text.endswith("…") and inert(text) == text



@pytest.mark.parametrize("task_type", ["shop.tasks.sync_order", "sync; touch PWNED", "$(touch PWNED)", "it's"])
def test_a_command_in_a_notice_pasted_into_a_shell_gets_the_task_type_as_one_word(task_type, tmp_path):
    _, body = messages.manual_message("en", task_type, Task(id=3, task_type=task_type, ref=None,
                                                            error_message="timeout", error_type=None))
    commands = re.findall(r"`(failured (?:requeue|list) [^`]*)`", body)
    assert len(commands) == 2
    for command in commands:  # a real shell prints the words it was given instead of running failured
        words = subprocess.run(["sh", "-c", "printf '%s\\n' " + command.split(" ", 1)[1]], cwd=tmp_path,
                               capture_output=True, text=True, check=True).stdout.splitlines()
        assert words[words.index("--type") + 1] == task_type, command
    assert not (tmp_path / "PWNED").exists()


def test_the_query_in_a_digest_quotes_a_masked_database_url_for_the_shell():
    command = messages._query_command("postgresql://failured:***@db.example/failured?sslmode=require")
    assert command == "psql 'postgresql://failured:***@db.example/failured?sslmode=require' -c"
    assert messages._query_command("/var/lib/failured/failured.db") == "sqlite3 /var/lib/failured/failured.db"
