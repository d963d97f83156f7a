"""How well does classification generalize? Cross-validation over the shipped corpus, grouped by source.

Every message of one source (a library, a vendor, a project) falls in the same
fold, so when a fold is scored the model has seen no message from its sources.
The rules (patterns, exception types, code tables) are fixed text written with
the whole corpus in view: their figures are in-corpus figures, optimistic for
sources failured has never met. Prints accuracy and per-category recall for
rules alone, code tables alone, the model alone and the whole pipeline, the
alternative stage orders, the model's threshold trade-off and the top confusions.
The "rules-blind" row scores every message as if no rule had recognised it
(the model held out by source, acting only above its threshold and guard):
that is what a message from a source failured has never seen mostly looks
like, and it is the row the threshold and the guard are tuned on.

``--curve`` scores each ``--holdout`` file with the model trained on 1/8, 1/4, 1/2 and all of the corpus's
sources instead (the learning curve). With ``--holdout FILE`` (corpus format, messages from sources the corpus does
not hold), it also scores rules, code tables, the model (trained on the whole
corpus) and the whole pipeline on that file: the figure for messages failured
has never seen. ``--no-cv`` skips the cross-validation; ``-v`` lists misses. ``--log-heads FILE`` puts a real
log line's head (timestamp, level, logger…) before every held-out message, as a failure copied from a log
reads (tests/data/log-heads.tsv: 167 heads of 40 logging frameworks, from public issues); ``--wrappers FILE``
puts each inside a real program's wrapper (``Task … failed: …``, ``任务执行失败：…``; tests/data/wrappers.tsv: 62
that name no cause of their own, from public code and issues); ``--json-logs FILE`` puts each inside a JSON log
record (tests/data/json-log-records.tsv: the records of 16 JSON loggers as their documentation shows them, the
message where each puts it).

    .venv/bin/python bench/generalize.py [--folds 10] [--threshold T] [--max-unknown U] [--holdout FILE]... [--no-cv] [-v]
    .venv/bin/python bench/generalize.py --no-cv --log-heads tests/data/log-heads.tsv --holdout FILE...
    .venv/bin/python bench/generalize.py --no-cv --wrappers tests/data/wrappers.tsv --holdout FILE...
    .venv/bin/python bench/generalize.py --no-cv --json-logs tests/data/json-log-records.tsv --holdout FILE...
    .venv/bin/python bench/generalize.py --curve --holdout FILE...
"""

import argparse
import csv
import json
import random
import time
from collections import Counter, defaultdict

from common import REPO

from failured import corpus, model as learner
from failured.classify import (RULE_STAGES, WRAPPED_MAX_UNKNOWN, WRAPPERS_READ, Classifier, exception_type_in,
                               model_text, unpack)
from failured.codes import load_code_tables
from failured.loghead import without_log_head
from failured.rules import load_ruleset
from failured.wrapper import wrapped_error


def grouped_folds(rows, k):
    """Source -> fold: biggest sources first, each into the currently smallest fold."""
    sizes = Counter(source for _, _, source, _ in rows)
    folds, fold_of = [0] * k, {}
    for source, size in sorted(sizes.items(), key=lambda item: (-item[1], item[0])):
        smallest = min(range(k), key=folds.__getitem__)
        fold_of[source] = smallest
        folds[smallest] += size
    return fold_of


def read_text(message, error_type):
    """What ``classify`` gives the model of a message: its text past its log head (the model trains on
    ``model_text`` of the whole message)."""
    return model_text(without_log_head(message), error_type)


def rule_decision(classifier, message, error_type):
    """(category, stage) the rule stages give (tag first), or ("unknown", "none"); a firm pattern's stage is
    "firm" (the model never overrules it)."""
    message, error_type = unpack(message, error_type)
    found = classifier._by_tag_stage(message)
    if found is None:
        message = without_log_head(message)
        found = classifier.rules_only(message, error_type or exception_type_in(message))
    if found is None:
        return ("unknown", "none")
    return found[0].name, "firm" if found[1] == "pattern" and classifier.firm(found) else found[1]


def rule_answer(classifier, message, error_type):
    """The category the rule stages give (tag first), or "unknown"."""
    return rule_decision(classifier, message, error_type)[0]


def fallback(rule, prediction, threshold, max_unknown=learner.MAX_UNKNOWN):
    """What the whole pipeline answers: the rules' category, else the model's when it may act."""
    if rule != "unknown" or prediction.confidence < threshold or prediction.unknown > max_unknown:
        return rule
    return prediction.category


def overruled(decision, prediction, threshold, overrule, max_unknown=learner.MAX_UNKNOWN):
    """The pipeline with overruling: as ``fallback``, and the model's category instead of a rule's (not a tag's,
    an early code's or a firm pattern's) when it disagrees at ``overrule`` confidence or more, within the guard,
    unknown included (classify.Classifier's rule)."""
    rule, stage = decision
    never = ("tag", "early_code", "firm")
    if rule != "unknown" and stage not in never and overrule < 1 and prediction.confidence >= overrule:
        if prediction.category == "unknown":  # a programming error some rule's phrase caught
            return "unknown"
        if prediction.unknown <= max_unknown and prediction.category != rule:
            return prediction.category
    return fallback(rule, prediction, threshold, max_unknown)


def inside_wrapper(message, error_type, decision, prediction, answer):
    """The error inside a program's wrapper that ``classify`` reads next (the message being left unknown by every
    rule and the model, the model giving unknown little chance), or None."""
    if decision != ("unknown", "none") or answer != "unknown" or prediction.unknown >= WRAPPED_MAX_UNKNOWN:
        return None
    text = without_log_head(unpack(message, error_type)[0])
    return wrapped_error(text) if exception_type_in(text) is None else None


def pipeline_answer(classifier, trained, message, error_type, args, wrappers=WRAPPERS_READ):
    """The whole pipeline's answer (``overruled``), reading the error inside a wrapper as ``classify`` does."""
    decision = rule_decision(classifier, message, error_type)
    prediction = trained.predict(read_text(message, error_type))
    answer = overruled(decision, prediction, args.threshold, args.overrule, args.max_unknown)
    return wrapped_answer(classifier, trained, message, error_type, args, decision, prediction, answer, wrappers)


def wrapped_answer(classifier, trained, message, error_type, args, decision, prediction, answer,
                   wrappers=WRAPPERS_READ):
    """``answer``, or the answer for the error inside the message's wrapper where ``classify`` reads one."""
    inner = inside_wrapper(message, error_type, decision, prediction, answer) if wrappers else None
    if inner is None:
        return answer
    return pipeline_answer(classifier, trained, inner, error_type, args, wrappers - 1)


def report(name, truth, answers, out):
    right = sum(t == a for t, a in zip(truth, answers))
    by_category = defaultdict(lambda: [0, 0])
    for t, a in zip(truth, answers):
        by_category[t][1] += 1
        by_category[t][0] += t == a
    out.append((name, right, len(truth), {c: r / n for c, (r, n) in by_category.items()}))


def _recalls(truth, answers):
    by_category = defaultdict(lambda: [0, 0])
    for t, a in zip(truth, answers):
        by_category[t][1] += 1
        by_category[t][0] += t == a
    return {c: r / n for c, (r, n) in by_category.items()}


def print_table(results, categories):
    short = {c: c.replace("recoverable_", "r_").replace("unrecoverable_", "u_") for c in categories}
    print(f"{'':34} {'accuracy':>8} " + " ".join(f"{short[c]:>12}" for c in categories) + "  right")
    for name, right, count, recalls in results:
        cells = " ".join(f"{recalls.get(c, 0):>12.1%}" for c in categories)
        print(f"{name:34} {right / count:>8.1%} {cells}  {right:,} of {count:,}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--threshold", type=float, default=learner.ModelSettings().min_confidence)
    parser.add_argument("--max-unknown", type=float, default=learner.MAX_UNKNOWN,
                        help="the guard: the model defers above this probability of unknown")
    parser.add_argument("--holdout", action="append", default=[],
                        help="a corpus-format file of messages from sources the corpus lacks (repeatable)")
    parser.add_argument("--overrule", type=float, default=learner.DEFAULT_OVERRULE_CONFIDENCE,
                        help="the model overrules a rule at or above this confidence (1: never)")
    parser.add_argument("--no-cv", action="store_true", help="skip the grouped cross-validation")
    parser.add_argument("-v", action="store_true", help="list the whole pipeline's misses")
    parser.add_argument("--log-heads", metavar="FILE",
                        help="score each --holdout file with a real log line's head (from FILE, as "
                             "tests/data/log-heads.tsv holds them) put before every message")
    parser.add_argument("--wrappers", metavar="FILE",
                        help="score each --holdout file with every message inside a real program's wrapper (from "
                             "FILE, as tests/data/wrappers.tsv holds them: text before and after the error)")
    parser.add_argument("--json-logs", metavar="FILE",
                        help="score each --holdout file with every message inside a JSON log record (from FILE, as "
                             "tests/data/json-log-records.tsv holds them: {error} marks where the message goes)")
    parser.add_argument("--curve", action="store_true",
                        help="the learning curve instead: the whole pipeline on each --holdout file with the model "
                             "trained on 1/8, 1/4, 1/2 and all of the corpus's sources")
    args = parser.parse_args()
    if args.curve:
        learning_curve(args)
        return
    if not args.no_cv:
        cross_validate(args)
    for path in args.holdout:
        score_holdout(args, path)


RULES_WRITTEN_FROM = 1617  # the corpus's first rows, the ones the patterns were written from (tests/test_shipped_patterns.py)
CURVE_SHARES = (0.125, 0.25, 0.5, 1.0)
CURVE_DRAWS = (1, 2)  # random draws of sources per share below the whole


def learning_curve(args):
    """The whole pipeline on each held-out file, the model trained on a random share of the corpus's sources
    (the rows the rules were written from always in): how much a doubling of the corpus is worth."""
    rows = list(corpus.read_corpus())
    written_from, rest = rows[:RULES_WRITTEN_FROM], rows[RULES_WRITTEN_FROM:]
    sources = sorted({source for _, _, source, _ in rest})
    names, _, _, both = classifiers()
    held = {path: read_holdout(path) for path in args.holdout}
    decisions = {path: [rule_decision(both, m, e) for _, e, _, m in held_rows] for path, held_rows in held.items()}
    print("share of sources  training messages  " + "  ".join(held))
    for share in CURVE_SHARES:
        for draw in CURVE_DRAWS if share < 1 else (None,):
            kept = set(sources) if draw is None else set(random.Random(draw).sample(sources, int(len(sources) * share)))
            training = written_from + [row for row in rest if row[2] in kept]
            trained = learner.train([(c, model_text(m, e)) for c, e, _, m in training if c in names or c == "unknown"])
            cells = []
            for path, held_rows in held.items():
                final = [overruled(d, trained.predict(read_text(m, e)), args.threshold, args.overrule, args.max_unknown)
                         for d, (_, e, _, m) in zip(decisions[path], held_rows)]
                cells.append(f"{sum(a == row[0] for a, row in zip(final, held_rows)) / len(held_rows):.1%}")
            print(f"{share:>15.3f}  {len(training):>17}  " + "  ".join(cells), flush=True)


def classifiers():
    """Rules alone, code tables alone and rules-then-codes over the shipped configuration."""
    ruleset = load_ruleset(REPO / "config")
    names = frozenset(c.name for c in ruleset.categories)
    tables = load_code_tables(REPO / "config", names)
    rules = Classifier(ruleset, code_tables=tables, stages=("exception_type", "pattern", "spelled"))
    codes = Classifier(ruleset, code_tables=tables, stages=("code",))
    both = Classifier(ruleset, code_tables=tables)
    return names, rules, codes, both


def read_holdout(path):
    """The rows of a held-out file in the corpus's format."""
    with open(path, encoding="utf-8", newline="") as handle:
        return corpus.parse(handle)


def _read_tsv(path):
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]


def with_log_heads(rows, heads_path):
    """``rows`` with a real log line's head (a one-line one, drawn at random, the same draw every run) put before
    each message: the messages as they arrive when copied from a log."""
    heads = [head for _, _, head, _ in _read_tsv(heads_path) if "\\n" not in head]
    draw = random.Random(len(rows)).choice
    return [(c, e, s, draw(heads) + m) for c, e, s, m in rows]


def with_wrappers(rows, wrappers_path):
    """``rows`` with each message inside a real program's wrapper (its text before and after the error, drawn at
    random, the same draw every run): the messages as an application reports a failure it caught."""
    wrappers = [(before, after) for _, _, before, after in _read_tsv(wrappers_path)]
    draw = random.Random(len(rows)).choice
    return [(c, e, s, f"{before}{m}{after}") for (c, e, s, m), (before, after) in
            zip(rows, (draw(wrappers) for _ in rows))]


def in_json_records(rows, records_path):
    """``rows`` with each message inside a JSON log record (drawn at random, the same draw every run), where its
    logger puts it: the messages as a service that logs JSON reports them."""
    records = [json.loads(record) for _, _, record in _read_tsv(records_path)]
    draw = random.Random(len(rows)).choice
    return [(c, e, s, json.dumps(_filled(draw(records), m), ensure_ascii=False, separators=(",", ":")))
            for c, e, s, m in rows]


def _filled(value, message):
    if isinstance(value, dict):
        return {key: _filled(item, message) for key, item in value.items()}
    return value.replace("{error}", message) if isinstance(value, str) else value


def score_holdout(args, path):
    """Figures on a held-out file: the model is trained on the whole shipped corpus."""
    rows = read_holdout(path)
    if args.log_heads:
        rows = with_log_heads(rows, args.log_heads)
    if args.wrappers:
        rows = with_wrappers(rows, args.wrappers)
    if args.json_logs:
        rows = in_json_records(rows, args.json_logs)
    names, rules, codes, both = classifiers()
    trained = learner.train([(c, model_text(m, e)) for c, e, _, m in corpus.read_corpus()
                             if c in names or c == "unknown"])
    truth = [c for c, _, _, _ in rows]
    rule_answers = [rule_answer(rules, m, e) for _, e, _, m in rows]
    code_answers = [rule_answer(codes, m, e) for _, e, _, m in rows]
    both_decisions = [rule_decision(both, m, e) for _, e, _, m in rows]
    both_answers = [name for name, _ in both_decisions]
    predictions = [trained.predict(read_text(m, e)) for _, e, _, m in rows]
    fallen_back = [fallback(a, p, args.threshold, args.max_unknown) for a, p in zip(both_answers, predictions)]
    final = [wrapped_answer(both, trained, m, e, args, d, p, overruled(d, p, args.threshold, args.overrule,
                                                                      args.max_unknown))
             for (_, e, _, m), d, p in zip(rows, both_decisions, predictions)]
    results = []
    report("rules alone (type + patterns + spelled)", truth, rule_answers, results)
    report("code tables alone", truth, code_answers, results)
    report("model alone (no threshold)", truth, [p.category for p in predictions], results)
    report("all rule stages, shipped order", truth, both_answers, results)
    report(f"pipeline, no overruling ({args.threshold}, {args.max_unknown})", truth, fallen_back, results)
    report(f"whole pipeline (overrule {args.overrule})", truth, final, results)
    sources = len({s for _, _, s, _ in rows})
    grafted = (f", each after a log head from {args.log_heads}" if args.log_heads else "") + (
        f", each inside a wrapper from {args.wrappers}" if args.wrappers else "") + (
        f", each inside a JSON log record from {args.json_logs}" if args.json_logs else "")
    print(f"\nheld-out {path}: {len(rows)} messages from {sources} sources{grafted} "
          f"(model trained on the whole shipped corpus)")
    print_table(results, sorted(set(truth)))
    confusions = Counter((t, a) for t, a in zip(truth, final) if t != a)
    print("\ntop confusions on the held-out file (truth -> answer):")
    for (t, a), n in confusions.most_common(12):
        print(f"  {n:4}  {t} -> {a}")
    if args.v:
        for (c, e, s, m), a, (rule, stage) in zip(rows, final, both_decisions):
            if c != a:
                print(f"{c} -> {a} (rules: {rule} by {stage}) [{s}] {m[:160]!r}")


# The shipped stage order against the alternatives measured for the README.
ORDERS = {
    "early code, type, pattern, code, spelled": RULE_STAGES,
    "type, early code, pattern, code, spelled": ("exception_type", "early_code", "pattern", "code", "spelled"),
    "type, pattern, code, spelled": ("exception_type", "pattern", "code", "spelled"),
    "type, pattern, code": ("exception_type", "pattern", "code"),
    "type, code, pattern, spelled": ("exception_type", "code", "pattern", "spelled"),
}
SHIPPED_ORDER = "early code, type, pattern, code, spelled"


def cross_validate(args):
    """Grouped cross-validation over the shipped corpus."""
    rows = list(corpus.read_corpus())
    names, rules, codes, _ = classifiers()
    ruleset, tables = rules.ruleset, rules.codes.tables
    ordered = {label: Classifier(ruleset, code_tables=tables, stages=stages) for label, stages in ORDERS.items()}

    truth = [c for c, _, _, _ in rows]
    rule_answers = [rule_answer(rules, m, e) for _, e, _, m in rows]
    code_answers = [rule_answer(codes, m, e) for _, e, _, m in rows]
    order_answers = {label: [rule_answer(c, m, e) for _, e, _, m in rows] for label, c in ordered.items()}

    shipped = [rule_decision(ordered[SHIPPED_ORDER], m, e) for _, e, _, m in rows]
    fold_of = grouped_folds(rows, args.folds)
    predictions, final = [None] * len(rows), [None] * len(rows)
    started = time.process_time()
    for fold in range(args.folds):
        training = [(c, model_text(m, e)) for c, e, s, m in rows if fold_of[s] != fold and (c in names or c == "unknown")]
        trained = learner.train(training)
        for i, (c, e, s, m) in enumerate(rows):
            if fold_of[s] == fold:
                predictions[i] = p = trained.predict(read_text(m, e))
                answer = overruled(shipped[i], p, args.threshold, args.overrule, args.max_unknown)
                final[i] = wrapped_answer(ordered[SHIPPED_ORDER], trained, m, e, args, shipped[i], p, answer)
    train_seconds = (time.process_time() - started) / args.folds

    model_answers = [p.category for p in predictions]
    results = []
    report("rules alone (type + patterns + spelled)", truth, rule_answers, results)
    report("code tables alone", truth, code_answers, results)
    report("model alone (no threshold)", truth, model_answers, results)
    for label, answers in order_answers.items():
        report(f"rules: {label}", truth, answers, results)
    pipelines = {}
    for label, answers in order_answers.items():
        pipelines[label] = [fallback(a, p, args.threshold, args.max_unknown) for a, p in zip(answers, predictions)]
        report(f"pipeline: {label} + model", truth, pipelines[label], results)
    pipelines["overruling"] = [overruled(d, p, args.threshold, args.overrule, args.max_unknown)
                               for d, p in zip(shipped, predictions)]
    report(f"pipeline: shipped order + model, overrule {args.overrule}", truth, pipelines["overruling"], results)
    report("whole pipeline (wrappers read past)", truth, final, results)
    blind = [fallback("unknown", p, args.threshold, args.max_unknown) for p in predictions]
    report("rules-blind: model, threshold+guard", truth, blind, results)

    categories = sorted(set(truth))
    sources = len(fold_of)
    print(f"corpus: {len(rows)} messages from {sources} sources; {args.folds} folds grouped by source; "
          f"model threshold {args.threshold}, guard {args.max_unknown}; training {train_seconds:.2f} CPU-s per fold")
    print_table(results, categories)

    print("\nmodel threshold on the messages the rules leave unknown (held-out folds):")
    residue = [(t, p) for t, a, p in zip(truth, order_answers[SHIPPED_ORDER], predictions) if a == "unknown"]
    print(f"  {len(residue)} messages, {sum(t == 'unknown' for t, _ in residue)} of them labelled unknown")
    for threshold in (0.5, 0.6, 0.7, 0.8, 0.9):
        acted = [(t, p) for t, p in residue if fallback("unknown", p, threshold, args.max_unknown) != "unknown"]
        right = sum(t == p.category for t, p in acted)
        print(f"  >= {threshold:.1f}: acts on {len(acted):4} , right {right:4} ({right / max(1, len(acted)):.0%})")

    print("\nrules-blind trade-off (every message, model held out; accuracy, unknown recall, lowest recall):")
    for threshold in (0.3, 0.4, 0.5, 0.6):
        cells = []
        for guard in (0.05, 0.1, 0.2, 0.3, 0.5, 1.0):
            answers = [fallback("unknown", p, threshold, guard) for p in predictions]
            right = sum(t == a for t, a in zip(truth, answers)) / len(truth)
            recall = _recalls(truth, answers)
            cells.append(f"u{guard:<4} {right:5.1%} {recall.get('unknown', 0):4.0%} {min(recall.values()):4.0%}")
        print(f"  t {threshold:.1f}: " + " | ".join(cells))

    confusions = Counter((t, a) for t, a in zip(truth, final) if t != a)
    print("\ntop confusions of the whole pipeline (truth -> answer):")
    for (t, a), n in confusions.most_common(12):
        print(f"  {n:4}  {t} -> {a}")
    if args.v:
        for (c, e, s, m), a, (rule, stage) in zip(rows, final, shipped):
            if c != a:
                print(f"{c} -> {a} (rules: {rule} by {stage}) [{s}] {m[:140]!r}")


if __name__ == "__main__":
    main()
