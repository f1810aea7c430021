"""Equality look-ups for mongomock (the Mongo tests' in-process engine), through the unique indexes the stores declare.

mongomock answers every query, even by `_id`, by testing every stored document, and checks every
unique index on every write the same way; measured, a message send slowed from 0.8 ms on an empty
store to 28 ms at 2,000 messages, and the chat benchmark spent 91% of its time there. A real
MongoDB answers these from B-tree indexes. This module gives the in-process engine the same
shape of answer for the queries the stores make most: equality on `_id`, and equality on all
fields of a unique index (conversation by pair and order, message by seq, message by client id,
event by id).

The tables map a key to the ids of documents that had that key when written. They are only ever
added to, never trusted: every candidate is re-read and re-tested against the full filter, so a
document changed or deleted since is simply dropped. Every write that can change an indexed
field passes through `_ensure_uniques`, which is where keys are added. Anything else (operators,
arrays, partial indexes) takes mongomock's own full scan, so results never differ from it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

from mongomock import DuplicateKeyError, helpers
from mongomock.collection import Collection
from mongomock.filtering import filter_applies

_SCALARS = (str, int, float, bool, type(None))
# mongomock is untyped; these names say what its functions are used for here.
_Collection: Any = Collection
_value_at: Any = helpers.get_value_by_dot
_matches: Any = filter_applies
_hashdict: Any = helpers.hashdict
_original_iter_documents: Any = Collection._iter_documents
_original_ensure_uniques: Any = Collection._ensure_uniques


class _Table:
    def __init__(self, fields: tuple[str, ...], sparse: bool) -> None:
        self.fields = fields
        self.sparse = sparse
        self.ids: defaultdict[tuple[Any, ...], set[Any]] = defaultdict(set)
        # False once a document holds an array or sub-document in an indexed field: such values
        # match queries in ways a key table cannot answer, so the table is no longer used.
        self.usable = True

    def key_of(self, doc: Any) -> tuple[Any, ...] | None:
        values = []
        for field in self.fields:
            try:
                value = _value_at(doc, field)
            except KeyError:
                value = None
            if not isinstance(value, _SCALARS):
                return None
            values.append(value)
        return tuple(values)

    def add(self, doc: Any) -> tuple[Any, ...] | None:
        key = self.key_of(doc)
        if key is None:
            self.usable = False
        elif not (self.sparse and all(v is None for v in key)):
            self.ids[key].add(_store_key(doc["_id"]))
        return key


class _Tables:
    def __init__(self) -> None:
        self.signature: tuple[Any, ...] | None = None
        self.by_index: dict[str, _Table] = {}
        self.has_unsupported = False


def _store_key(doc_id: Any) -> Any:
    return _hashdict(doc_id) if isinstance(doc_id, dict) else doc_id


def _tables(collection: Any) -> _Tables:
    store = collection._store
    tables: _Tables | None = getattr(store, "_messenger_tables", None)
    if tables is None:
        tables = _Tables()
        store._messenger_tables = tables
    unique = {name: index for name, index in store.indexes.items() if index.get("unique") and name != "_id_"}
    signature = tuple(sorted((name, tuple(index["key"]), bool(index.get("sparse"))) for name, index in unique.items()))
    if signature != tables.signature:  # indexes were created or dropped: build the tables afresh
        tables.signature = signature
        tables.has_unsupported = any(index.get("partialFilterExpression") for index in unique.values())
        tables.by_index = {
            name: _Table(tuple(field for field, _ in index["key"]), bool(index.get("sparse")))
            for name, index in unique.items()
            if not index.get("partialFilterExpression")
        }
        for doc in store.documents:
            for table in tables.by_index.values():
                table.add(doc)
    return tables


def _candidates(collection: Any, spec: Any) -> Iterable[Any] | None:
    """The few documents that can match `spec`, or None when only a full scan can tell."""
    if not isinstance(spec, dict) or not spec:
        return None
    store = collection._store
    if "_id" in spec:
        wanted = spec["_id"]
        if isinstance(wanted, dict) and set(wanted) == {"$in"} and isinstance(wanted["$in"], list):
            ids = [w for w in wanted["$in"] if isinstance(w, _SCALARS)]
            if len(ids) != len(wanted["$in"]):
                return None
        elif isinstance(wanted, _SCALARS):
            ids = [wanted]
        else:
            return None
        return [store[i] for i in dict.fromkeys(ids) if i in store]
    for table in _tables(collection).by_index.values():
        if not table.usable or not all(f in spec and isinstance(spec[f], _SCALARS) for f in table.fields):
            continue
        key = tuple(spec[f] for f in table.fields)
        if table.sparse and all(v is None for v in key):
            continue
        return [store[i] for i in list(table.ids.get(key, ())) if i in store]
    return None


def _iter_documents(self: Any, filter: Any) -> Iterator[Any]:
    candidates = _candidates(self, filter)
    if candidates is None:
        everything: Iterator[Any] = _original_iter_documents(self, filter)
        return everything
    return (doc for doc in candidates if _matches(filter, doc))


def _ensure_uniques(self: Any, new_data: Any) -> None:
    tables = _tables(self)
    if tables.has_unsupported:
        _original_ensure_uniques(self, new_data)
    store = self._store
    own_id = _store_key(new_data["_id"])
    for table in tables.by_index.values():
        key = table.add(new_data)
        if key is None:
            _original_ensure_uniques(self, new_data)  # arrays or sub-documents: mongomock's own check
            continue
        if table.sparse and all(v is None for v in key):
            continue
        for other in list(table.ids.get(key, ())):
            if other == own_id:
                continue
            if other in store and table.key_of(store[other]) == key:
                raise DuplicateKeyError("E11000 Duplicate Key Error", 11000)
            table.ids[key].discard(other)  # changed or deleted since: forget it


def _bulk_write(self: Any, requests: Iterable[Any], ordered: bool = True, **_: Any) -> Any:
    """mongomock's bulk_write predates this PyMongo's operation objects: run them one by one, in
    order, as the wire server does (each is atomic on its document, as in a real bulk write)."""
    for op in requests:
        kind = type(op).__name__
        if kind == "InsertOne":
            self.insert_one(op._doc)
        elif kind == "UpdateOne":
            self.update_one(op._filter, op._doc, upsert=op._upsert)
        elif kind == "UpdateMany":
            self.update_many(op._filter, op._doc, upsert=op._upsert)
        elif kind == "DeleteOne":
            self.delete_one(op._filter)
        elif kind == "DeleteMany":
            self.delete_many(op._filter)
        else:
            raise NotImplementedError(f"bulk_write of {kind} in the embedded engine")
    return None


def install() -> None:
    """Patch mongomock's two hot paths, and its bulk_write; idempotent. Only the embedded engine uses mongomock."""
    _Collection._iter_documents = _iter_documents
    _Collection._ensure_uniques = _ensure_uniques
    _Collection.bulk_write = _bulk_write
