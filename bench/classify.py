"""Classification speed on a cold mix, `classify --json -` against the spec's loop, hot reload and memory.

The mix is cold: every message is unique in its request ids, hosts and
numbers (a corpus message with its digits redrawn and an id and host added,
noise lines, and long Python tracebacks), so neither the classifier's cache
nor RE2's lazily built DFA sees a message twice. Rates are CPU time of this
process (the machine is shared); the whole-process comparison reports wall
and CPU seconds of each child process.

    .venv/bin/python bench/classify.py                 # everything (several minutes)
    .venv/bin/python bench/classify.py --lines 20000   # a shorter whole-process run
"""

import argparse
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from common import REPO, emit

import re2

from failured import concepts, corpus, fingerprint as fingerprints
from failured.classify import OVERRULE_NEVER, exception_type_in, model_text, without_frames
from failured.config import load_config
from failured.fingerprint import fingerprint
from failured.matcher import PatternSet
from failured.rules import re2_options

COUNT = 20_000  # in-process messages
LINES = 200_000  # whole-process lines
COPIES = 10  # the large ruleset: the shipped patterns ten times over
HOSTS = ["db", "redis", "api", "pay", "mq", "worker", "cache", "search"]
_DIGITS = re.compile(r"\d+")

# The spec's FailureAnalyzer: its listed patterns and its table's example phrases, first hit wins,
# Python re.search on the lower-cased message, one JSON line per message.
SPEC_LOOP = r'''
import json, re, sys
CATEGORIES = [
    ("recoverable_network", [r"connection.*timeout", r"network.*unreachable", r"connection.*refused",
                             r"dns.*resolution.*failed", r"socket.*timeout", r"read.*timeout"]),
    ("recoverable_system", [r"memory.*error", r"disk.*space", r"no.*space.*left",
                            r"resource.*temporarily.*unavailable", r"too.*many.*open.*files", r"permission.*denied"]),
    ("recoverable_temporary", [r"database connection failed", r"rate limit exceeded"]),
    ("unrecoverable_data", [r"invalid.*data.*format", r"malformed.*json", r"parse.*error", r"validation.*failed",
                            r"constraint.*violation", r"null.*value.*in.*column"]),
    ("unrecoverable_config", [r"api key invalid", r"authentication failed"]),
    ("unrecoverable_business", [r"resource not found", r"courier not supported"]),
]
def analyze(message):
    lowered = message.lower()
    for category, patterns in CATEGORIES:
        for pattern in patterns:
            if re.search(pattern, lowered):
                return category
    return "unknown"
for line in sys.stdin:
    message = line.rstrip("\n")
    if message:
        sys.stdout.write(json.dumps({"category": analyze(message), "message": message}, ensure_ascii=False) + "\n")
'''


def cold_mix(count, seed=42):
    """``count`` unique messages: real ones with new numbers, ids and hosts, noise, 15 % long tracebacks."""
    rng = random.Random(seed)
    real = [message for _, _, _, message in corpus.read_corpus()]
    noise = ["job finished with status {n}", "worker {n} restarted", "unexpected state {n} in step {m}",
             "用户 {n} 的请求处理异常", "exit status {n}"]
    redraw = lambda text: _DIGITS.sub(lambda m: str(rng.randint(1, 10 ** len(m.group()))), text)  # noqa: E731
    out = []
    for _ in range(count):
        request = uuid.UUID(int=rng.getrandbits(128), version=4)
        host = f"{rng.choice(HOSTS)}-{rng.randint(1, 999)}.prod-{rng.randint(1, 99)}.example.internal"
        roll = rng.random()
        if roll < 0.70:
            base, shape = redraw(rng.choice(real)), rng.random()
            if shape < 0.4:
                message = f"{base} (request_id={request}, host={host})"
            elif shape < 0.7:
                message = f"[{host}] req {request}: {base}"
            else:
                message = f"{base} order={rng.randint(10 ** 6, 10 ** 9)} trace={request.hex}"
        elif roll < 0.85:
            message = (rng.choice(noise).replace("{n}", str(rng.randint(1, 99999)))
                       .replace("{m}", str(rng.randint(1, 9))) + f" id={request}")
        else:
            frames = "".join(f'  File "/srv/app/{rng.choice(HOSTS)}/mod{rng.randint(1, 999)}.py", line '
                             f"{rng.randint(1, 3000)}, in run_{rng.randint(1, 99)}\n"
                             f"    result = handler(task_{rng.randint(1, 99999)})\n"
                             for _ in range(rng.randint(10, 40)))
            message = (f"Traceback (most recent call last):\n{frames}{redraw(rng.choice(real))} "
                       f"(request_id={request}, host={host})")
        out.append(message)
    return out


def cpu_rate(function, messages):
    started = time.process_time()
    for message in messages:
        function(message)
    return len(messages) / (time.process_time() - started)


def in_process(count):
    snapshot = load_config(REPO / "config")
    classifier = snapshot.classifier
    classifier.patterns.wait_ready()
    classifier.codes.wait_ready()
    concepts.wait_ready()
    messages = cold_mix(count)
    assert len(set(messages)) == len(messages)
    patterns = len(classifier.patterns.patterns)
    print(f"classify: {len(messages):,} unique messages (mean {sum(map(len, messages)) // len(messages)} chars), "
          f"{patterns} patterns, engine {classifier.patterns.engine}, compiled code (failured._speedups) "
          f"{'in use' if fingerprints.NATIVE_PASSES else 'NOT built: Python only'}", flush=True)
    cold = cpu_rate(classifier.classify_uncached, messages)
    warm = cpu_rate(classifier.classify_uncached, messages)
    overrule, classifier.overrule_confidence = classifier.overrule_confidence, OVERRULE_NEVER  # the rules alone decide
    unique = cold_mix(count, seed=43)
    rules_cold, rules_warm = cpu_rate(classifier.classify_uncached, unique), cpu_rate(classifier.classify_uncached, unique)
    classifier.overrule_confidence = overrule
    other = cold_mix(count, seed=7)
    match_cold = cpu_rate(classifier.patterns.best, other)
    match_warm = cpu_rate(classifier.patterns.best, other)
    owners = classifier._pattern_owner
    re2_only = PatternSet([o[1] for o in owners], [o[0] for o in owners], engine="re2")
    one_set = re2.Set.SearchSet(re2_options())  # as classification matched before Hyperscan
    for owner in owners:
        one_set.Add(owner[1])
    one_set.Compile()
    sample = cold_mix(count // 4, seed=11)
    stages = stage_costs(classifier, cold_mix(count // 4, seed=13))
    return {"classify_uncached cold msgs/s": round(cold), "classify_uncached warm msgs/s": round(warm),
            "overruling": f"at confidence {overrule}" if overrule < OVERRULE_NEVER else "off",
            "without overruling cold msgs/s": round(rules_cold), "without overruling warm msgs/s": round(rules_warm),
            "compiled code": "yes" if fingerprints.NATIVE_PASSES else "no",
            **stages,
            "pattern matching cold msgs/s": round(match_cold), "pattern matching warm msgs/s": round(match_warm),
            "engine": classifier.patterns.engine,
            "RE2 sets alone cold msgs/s": round(cpu_rate(re2_only.best, sample)),
            "RE2 sets alone warm msgs/s": round(cpu_rate(re2_only.best, sample)),
            "one RE2 Set (before) cold msgs/s": round(cpu_rate(one_set.Match, other[:len(sample)])),
            "one RE2 Set (before) warm msgs/s": round(cpu_rate(one_set.Match, other[:len(sample)]))}


def cpu_micros(function, items):
    """CPU microseconds per item of ``function(*item)`` over ``items`` (0 when there are none)."""
    started = time.process_time()
    for item in items:
        function(*item)
    return round((time.process_time() - started) / max(1, len(items)) * 1e6, 1)


def stage_costs(classifier, messages):
    """Where a cold message's time goes: each stage on its own over ``messages``, in CPU µs.

    The model is timed on the messages no rule decides, after the rules ran on them (the
    rules warm nothing the model reads); every other stage on a new mix, cold again.
    """
    cases = [(message, exception_type_in(message)) for message in messages]
    undecided = [(model_text(m, e),) for m, e in cases if classifier.rules_only(m, e) is None]
    fresh = [(message, exception_type_in(message)) for message in cold_mix(len(messages), seed=17)]
    cores = [(f"{e}: {m}" if e else m,) for m, e in ((without_frames(m) if "\n" in m else m, e) for m, e in fresh)]
    return {"stage µs/msg: fingerprint": cpu_micros(fingerprint, [(m,) for m, _ in fresh]),
            "stage µs/msg: code tables, every table": cpu_micros(classifier.codes.match, cores),
            "stage µs/msg: rules (tables, type, patterns)": cpu_micros(classifier.rules_only, fresh),
            "stage µs/call: model (on the share no rule decides)": cpu_micros(classifier.model.predict, undecided),
            "share no rule decides": round(len(undecided) / len(cases), 3)}


def child_seconds(argv, stdin_path, env=None):
    """(wall, CPU) seconds of one child process reading ``stdin_path``, its output thrown away."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with open(stdin_path, "rb") as stdin:
        subprocess.run(argv, stdin=stdin, stdout=subprocess.DEVNULL, check=True, env=env)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def whole_process(lines, directory):
    path = directory / "lines.txt"
    with open(path, "w", encoding="utf-8") as handle:
        for message in cold_mix(lines, seed=99):
            handle.write(message.replace("\n", "\\n") + "\n")  # one message a line, as the corpus writes it
    spec = directory / "spec_loop.py"
    spec.write_text(SPEC_LOOP, encoding="utf-8")
    env = {**os.environ, "FAILURE_LOG_LEVEL": "WARNING"}
    failured = [sys.executable, "-m", "failured", "classify", "--json", "--config", str(REPO / "config"), "-"]
    ours_wall, ours_cpu = child_seconds(failured, path, env)
    spec_wall, spec_cpu = child_seconds([sys.executable, str(spec)], path)
    return {f"failured classify --json - ({lines:,} lines) wall s": round(ours_wall, 1),
            "failured classify CPU s": round(ours_cpu, 1),
            "spec loop process wall s": round(spec_wall, 1), "spec loop CPU s": round(spec_cpu, 1),
            "ratio (spec CPU / failured CPU)": round(spec_cpu / ours_cpu, 2)}


def ruleset_dir(directory, copies, nonce):
    """The shipped config, its patterns ``copies`` times over (each copy made distinct by an alternative
    that never matches, in the same categories), plus a new pattern.

    The nonce pattern makes the ruleset new to the compiled-database cache, so a reload compiles.
    """
    target = directory / f"config-{copies}x-{nonce}"
    shutil.copytree(REPO / "config", target)
    ruleset = load_config(REPO / "config").ruleset
    names = [c.name for c in ruleset.categories]
    for copy in range(1, copies):
        tables = []
        for category in ruleset.categories:
            patterns = ", ".join(json.dumps(f"{p.text}|zz{copy}x{i}-seen-nowhere", ensure_ascii=False)
                                 for i, p in enumerate(category.patterns))
            tables.append(f'[[category]]\nname = "{category.name}"\npatterns = [{patterns}]\n')
        (target / "patterns" / f"8{copy}-copy.toml").write_text("\n".join(tables), encoding="utf-8")
    (target / "patterns" / "89-nonce.toml").write_text(
        f'[[category]]\nname = "{names[0]}"\npatterns = ["bench-{nonce}-never"]\n', encoding="utf-8")
    return target


def reload_while_serving(config_dir, messages):
    """Build a snapshot for ``config_dir`` while another thread classifies without pause.

    Returns (seconds until the new snapshot serves, CPU seconds the reload took for it, seconds until
    Hyperscan serves it, longest gap between two classifications, patterns).
    """
    current = {"snapshot": load_config(REPO / "config")}
    current["snapshot"].classifier.patterns.wait_ready()
    current["snapshot"].classifier.codes.wait_ready()
    stop, gaps, done = threading.Event(), [0.0], [0]

    def serve():
        last = time.perf_counter()
        while not stop.is_set():
            for message in messages:
                current["snapshot"].classifier.classify_uncached(message)
                now = time.perf_counter()
                gaps[0], last = max(gaps[0], now - last), now
                done[0] += 1
                if stop.is_set():
                    break

    worker = threading.Thread(target=serve)
    worker.start()
    while done[0] < 50:  # serving before the reload starts
        time.sleep(0.01)
    gaps[0] = 0.0
    started, cpu = time.perf_counter(), time.thread_time()
    snapshot = load_config(config_dir)
    current["snapshot"] = snapshot  # the swap: one reference
    serving, cpu = time.perf_counter() - started, time.thread_time() - cpu
    snapshot.classifier.patterns.wait_ready()
    snapshot.classifier.codes.wait_ready()
    ready = time.perf_counter() - started
    count = done[0]
    while done[0] < count + 50:  # and after it, with the new snapshot
        time.sleep(0.01)
    stop.set()
    worker.join()
    return serving, cpu, ready, gaps[0], len(snapshot.classifier.patterns.patterns)


def reloads(directory):
    """Reload figures, and the large ruleset's directory (its database now cached)."""
    messages = cold_mix(2000, seed=5)
    figures = {}
    for copies in (1, COPIES):
        config_dir = ruleset_dir(directory, copies, uuid.uuid4().hex[:8])
        serving, cpu, ready, gap, patterns = reload_while_serving(config_dir, messages)
        figures[f"reload {patterns} patterns: serving after s"] = round(serving, 2)
        figures[f"reload {patterns} patterns: its CPU s"] = round(cpu, 2)
        figures[f"reload {patterns} patterns: Hyperscan after s"] = round(ready, 1)
        figures[f"reload {patterns} patterns: longest pause s"] = round(gap, 3)
        serving, cpu, _, gap, _ = reload_while_serving(config_dir, messages)  # again: the database is cached
        figures[f"reload {patterns} patterns again (cached): serving after s"] = round(serving, 2)
        figures[f"reload {patterns} patterns again (cached): its CPU s"] = round(cpu, 2)
        figures[f"reload {patterns} patterns again (cached): longest pause s"] = round(gap, 3)
    return figures, config_dir


def rss_kib():
    with open("/proc/self/status", encoding="ascii") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))


def memory_child(config_dir, messages_path):
    """Run in a child: resident size before and after the large ruleset's classifier serves 5,000 messages.

    The messages come from a file the parent wrote: a daemon whose model comes from the model cache
    never parses the corpus (training does, in a child process), and parsing it here to make them
    left about 5 MB in this process's heap after it was let go."""
    messages = json.loads(Path(messages_path).read_text(encoding="utf-8"))
    before = rss_kib()
    classifier = load_config(config_dir).classifier
    classifier.patterns.wait_ready()
    classifier.codes.wait_ready()
    for message in messages:
        classifier.classify_uncached(message)
    after = rss_kib()
    print(json.dumps({"before": before, "after": after, "patterns": len(classifier.patterns.patterns),
                      "engine": classifier.patterns.engine}))


def memory(config_dir):
    load_config(config_dir).classifier.patterns.wait_ready()  # compiled once, as a running daemon has it
    messages_path = Path(config_dir).parent / "memory-messages.json"
    messages_path.write_text(json.dumps(cold_mix(5000, seed=3)), encoding="utf-8")
    out = subprocess.run([sys.executable, __file__, "--memory-child", str(config_dir), str(messages_path)],
                         capture_output=True, text=True, check=True).stdout
    sizes = json.loads(out.strip().splitlines()[-1])
    return {f"RSS with {sizes['patterns']} patterns MB": round(sizes["after"] / 1024, 1),
            "classifier's share MB": round((sizes["after"] - sizes["before"]) / 1024, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=COUNT)
    parser.add_argument("--lines", type=int, default=LINES)
    parser.add_argument("--skip", action="append", default=[], choices=["process", "reload", "memory"])
    parser.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        return memory_child(*args.memory_child)
    figures = in_process(args.count)
    figures["load average"] = round(os.getloadavg()[0], 1)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        if "process" not in args.skip:
            figures.update(whole_process(args.lines, directory))
        large = None
        if "reload" not in args.skip:
            reload_figures, large = reloads(directory)
            figures.update(reload_figures)
        if "memory" not in args.skip:
            figures.update(memory(large or ruleset_dir(directory, COPIES, uuid.uuid4().hex[:8])))
    emit("classify", figures, ">= 100,000 msgs/s cold in-process; >= 3x the spec loop whole-process; "
                              "reload serving <= 2 s without pause; <= 100 MB with the 10x ruleset")


if __name__ == "__main__":
    main()
