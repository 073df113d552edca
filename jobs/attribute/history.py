"""History: the commits in an incident's suspect range and the ones that touch the metric's lineage."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlglot
import yaml
from sqlglot.dialects import Dialect
from sqlglot.errors import SqlglotError

from jobs.core.records import Candidate
from jobs.project.git import Git, GitError
from jobs.project.lineage import Lineage

DEFAULT_LIMIT = 50  # commits looked at when there is no last good SHA
INTENTIONAL_MARKERS = ("[cairn:intentional]", "cairn: intentional")
_DOC_KEYS = frozenset({"description", "doc", "docs", "doc_blocks"})
_JINJA_COMMENT = re.compile(r"{#.*?#}", re.S)
_JINJA = re.compile(r"{{|{%")
# A changed line that reshapes rows changes every column a model passes on.
_ROW_SHAPING = re.compile(r"\b(where|join|group\s+by|having|qualify|union|distinct|limit|on|using)\b", re.I)
# A line opening a SQL clause; the ones _ROW_SHAPING matches filter, join, group or limit rows.
_CLAUSE = re.compile(r"^\s*(select|from|where|having|qualify|group\s+by|order\s+by|limit|union|"
                     r"(?:(?:left|right|full|inner|cross)\s+)?(?:outer\s+)?join|on)\b", re.I)
# `expr as alias,` alone on a line: one output column of a select list.
_SELECT_ITEM = re.compile(r"^\s*(?!(?:where|and|or|on|having|when)\b)\S.*?\s+as\s+(?P<alias>\"\w+\"|`\w+`|\w+)\s*,?\s*$",
                          re.I)
_FIELD, _RECORD = "\x1f", "\x1e"


@dataclass(frozen=True)
class FileChange:
    path: str  # repo-relative, after the change (before it, for a deletion)
    old_path: str | None  # the path before a rename or copy
    status: str  # A, M, D, R, C, T


@dataclass(frozen=True)
class Commit:
    sha: str
    parents: tuple[str, ...]
    author: str
    email: str
    authored_at: datetime  # tz-aware
    message: str
    files: tuple[FileChange, ...]  # against the first parent for a merge

    @property
    def is_merge(self) -> bool:
        return len(self.parents) > 1

    @property
    def base(self) -> str | None:
        """What this commit's changes are measured against: its first parent (None for a root)."""
        return self.parents[0] if self.parents else None


def commits(git: Git, last_good: str | None, first_bad: str, limit: int = DEFAULT_LIMIT,
            first_parent: bool = False) -> list[Commit]:
    """Commits reachable from first_bad and not from last_good, newest first."""
    spec = [f"{last_good}..{first_bad}"] if last_good else ["-n", str(limit), first_bad]
    shas = git.run("rev-list", "--topo-order", *(["--first-parent"] if first_parent else []), *spec).split()
    if not shas:
        return []
    fmt = _FIELD.join(("%H", "%P", "%an", "%ae", "%aI", "%B")) + _RECORD
    raw = git.run("log", "--no-walk=unsorted", f"--format={fmt}", *shas)
    found = []
    for record in raw.split(_RECORD):
        if not record.strip():
            continue
        sha, parents, author, email, at, message = record.lstrip("\n").split(_FIELD)
        parents_t = tuple(parents.split())
        found.append(Commit(sha, parents_t, author, email, datetime.fromisoformat(at), message.strip(),
                            _changes(git, sha, parents_t)))
    return found


def _changes(git: Git, sha: str, parents: tuple[str, ...]) -> tuple[FileChange, ...]:
    against = [parents[0], sha] if parents else ["--root", sha]
    out = git.run("diff-tree", "-r", "-M", "--no-commit-id", "--name-status", "-z", *against).split("\0")
    changes, i = [], 0
    while i < len(out) and out[i]:
        status = out[i][0]
        if status in "RC":
            changes.append(FileChange(out[i + 2], out[i + 1], status))
            i += 3
        else:
            changes.append(FileChange(out[i + 1], None, status))
            i += 2
    return tuple(changes)


def diff(git: Git, sha: str, paths: Sequence[str] | None = None) -> str:
    """The commit's unified diff (a merge: against its first parent), limited to `paths`."""
    parents = git.run("rev-list", "--parents", "-n", "1", sha).split()[1:]
    against = [parents[0], sha] if parents else ["--root", sha]
    limit = ["--", *paths] if paths else []
    return git.run("diff-tree", "-p", "-M", "--no-commit-id", *against, *limit)


def compiled_sql_diff(old: str, new: str, dialect: str | None = None) -> str:
    """Unified diff of two compiled SQL texts, each pretty-printed by sqlglot when it parses."""
    return "".join(difflib.unified_diff(_pretty(old, dialect).splitlines(keepends=True),
                                        _pretty(new, dialect).splitlines(keepends=True),
                                        fromfile="before.sql", tofile="after.sql"))


def _pretty(sql: str, dialect: str | None) -> str:
    try:
        return ";\n".join(e.sql(dialect=dialect, pretty=True) for e in sqlglot.parse(sql, read=dialect) if e) + "\n"
    except SqlglotError:
        return sql if sql.endswith("\n") else sql + "\n"


def candidates(git: Git, lineage: Lineage, last_good: str | None, first_bad: str, project_subdir: str = "",
               intentional_markers: Sequence[str] = INTENTIONAL_MARKERS, limit: int = DEFAULT_LIMIT,
               dialect: str | None = None) -> list[Candidate]:
    """The suspect range's commits that touch a lineage file (either side of a rename), newest first."""
    lineage_files = lineage.files
    found = []
    for commit in commits(git, last_good, first_bad, limit):
        relevant = [c for c in commit.files
                    if {_in_project(p, project_subdir) for p in (c.path, c.old_path)} & lineage_files]
        if not relevant:
            continue
        files = tuple(dict.fromkeys(p for c in relevant for p in (c.old_path, c.path) if p))
        models = {uid for p in files for uid in lineage.nodes_for_file(_in_project(p, project_subdir) or "")}
        patch = diff(git, commit.sha, files)
        found.append(Candidate(
            sha=commit.sha,
            author=commit.author,
            authored_at=commit.authored_at,
            message=commit.message,
            files=files,
            models=tuple(sorted(models, key=lambda u: (lineage.distance(u), u))),
            distance=min((lineage.distance(u) for u in models), default=None),
            touches_metric_columns=_touches_columns(lineage, relevant, patch, project_subdir),
            diff=patch,
            docs_only=all(_docs_only(git, commit, c, dialect) for c in relevant),
            intentional=any(m.lower() in commit.message.lower() for m in intentional_markers),
        ))
    return found


def _in_project(path: str | None, subdir: str) -> str | None:
    """A repo-relative path made project-relative; None when it lies outside the project."""
    if path is None:
        return None
    prefix = subdir.strip("/")
    if not prefix:
        return path
    return path[len(prefix) + 1:] if path.startswith(prefix + "/") else None


def _show(git: Git, rev: str | None, path: str | None) -> str | None:
    if rev is None or path is None:
        return None
    try:
        return git.run("show", f"{rev}:{path}")
    except GitError:
        return None


def _docs_only(git: Git, commit: Commit, change: FileChange, dialect: str | None) -> bool:
    """True when the change alters only documentation, comments or whitespace."""
    if change.path.endswith(".md") and (change.old_path or change.path).endswith(".md"):
        return True
    if change.status not in "MRT":
        return False  # an added or deleted YAML or SQL file can declare or remove anything
    old, new = _show(git, commit.base, change.old_path or change.path), _show(git, commit.sha, change.path)
    if old is None or new is None:
        return False
    if change.path.endswith((".yml", ".yaml")):
        try:
            return _undocumented(yaml.safe_load(old)) == _undocumented(yaml.safe_load(new))
        except yaml.YAMLError:
            return False
    if change.path.endswith(".sql"):
        return same_sql(old, new, dialect)
    return False


def _undocumented(value: object) -> object:
    if isinstance(value, dict):
        return {k: _undocumented(v) for k, v in value.items() if k not in _DOC_KEYS}
    if isinstance(value, list):
        return [_undocumented(v) for v in value]
    return value


def same_sql(old: str, new: str, dialect: str | None = None) -> bool:
    """Whether two SQL (or Jinja-SQL) texts differ only in comments and whitespace."""
    old, new = _JINJA_COMMENT.sub("", old), _JINJA_COMMENT.sub("", new)
    if not (_JINJA.search(old) or _JINJA.search(new)):
        try:
            parse = lambda s: [e.sql(dialect=dialect, comments=False) for e in sqlglot.parse(s, read=dialect) if e]
            return parse(old) == parse(new)
        except SqlglotError:
            pass
    # Jinja does not parse as SQL; its tokens do, and the tokenizer drops comments and whitespace.
    try:
        tokenize = Dialect.get_or_raise(dialect).tokenize
        return [(t.token_type, t.text) for t in tokenize(old)] == [(t.token_type, t.text) for t in tokenize(new)]
    except SqlglotError:
        strip = lambda s: " ".join(re.sub(r"--[^\n]*|/\*.*?\*/", " ", s, flags=re.S).split())
        return strip(old) == strip(new)


def _changed_lines(patch: str, path: str) -> list[tuple[str, str | None]]:
    """Each added or removed line of `path` with the SQL clause it sits in, as far as the hunk shows
    (the nearest clause keyword above it, context lines included; None when the hunk shows none)."""
    lines, inside, clause = [], False, None
    for line in patch.splitlines():
        if line.startswith("diff --git"):
            inside = f" b/{path}" in line or f"a/{path} " in line
        elif not inside or line.startswith(("+++", "---")):
            continue
        elif line.startswith("@@"):
            clause = None
        elif line[:1] in "+- ":
            body = line[1:]
            keyword = _CLAUSE.match(body)
            if keyword:
                clause = re.sub(r"\s+", " ", keyword.group(1).lower())
                clause = "join" if clause.endswith("join") else clause
            elif body.lstrip().startswith(")"):
                clause = None  # the end of a CTE or subquery: its clause no longer applies
            if line[:1] != " ":
                lines.append((body, clause))
    return lines


def _touches_columns(lineage: Lineage, changes: list[FileChange], patch: str, subdir: str) -> bool | None:
    """Heuristic: a changed line of a model's SQL sits in a clause that reshapes rows (where, join,
    group by…), or names one of the model's (or its inputs') narrowed columns. None when that cannot
    be told: a touched node has no narrowed columns, or the change is not model SQL (a macro, YAML,
    project config)."""
    unresolved = False
    for change in changes:
        path = _in_project(change.path, subdir) or _in_project(change.old_path, subdir) or ""
        lines = _changed_lines(patch, change.path)
        for uid in lineage.nodes_for_file(path):
            if path != lineage.defined_in.get(uid) or not path.endswith(".sql"):
                unresolved = True  # macros, YAML and config change columns in ways the text does not show
                continue
            # A line under where/join/group by… changes which rows reach the metric, whatever its columns.
            if any(clause is not None and _ROW_SHAPING.fullmatch(clause) for _, clause in lines):
                return True
            own = lineage.columns(uid)
            inputs = [lineage.columns(p) for p, d in lineage.edges if d == uid]
            if own is None or any(c is None for c in inputs):
                unresolved = True
                continue
            names = own.union(*inputs)
            words = re.compile(r"\b(" + "|".join(map(re.escape, sorted(names))) + r")\b", re.I) if names else None
            if own and any(_line_touches(line, own, words) for line, _ in lines):
                return True
    return None if unresolved else False


def _line_touches(line: str, own: set[str], words: re.Pattern | None) -> bool:
    """One changed line outside a row-shaping clause: a select-list column only if its output feeds
    the metric (an added alias of a feeding column does not); any other line if it reshapes rows
    or names such a column."""
    item = _SELECT_ITEM.match(line)
    if item:
        return item["alias"].strip('"`').lower() in {c.lower() for c in own}
    return bool((words and words.search(line)) or _ROW_SHAPING.search(line))
