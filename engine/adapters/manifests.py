"""Reading and validating a rendered overlay at fleet size: one document at a time, schemas once.

The Git writer renders the whole overlay (``kubectl kustomize``) twice per apply cycle — to see
which workloads and containers it has, and to validate the result before committing — and the
render holds *every* workload of the repository, however few a cycle changes.  At 1,000
workloads the two steps cost (``bench/bench_apply.py``, 2026-12-01): reading the render with
ruamel's pure-Python safe loader ~8-16 s, and ``kubernetes_validate.validate`` ~11.6 ms per
document, because it loads the JSON schema files and builds a fresh ``referencing`` registry and
validator on every call.  Here:

* :func:`iter_documents` reads the render with PyYAML's libyaml loader (``CSafeLoader``; the
  pure ``SafeLoader`` when libyaml is missing), one document at a time, so a render is never a
  list of every workload's parsed manifest.  kubectl writes YAML through go-yaml, which quotes
  every string a YAML 1.1 reader would take for something else — PyYAML is such a reader.
  ``tests/unit/test_manifests.py`` checks that both loaders read this repository's overlay alike.
* :class:`SchemaValidator` is ``kubernetes_validate.validate(doc, version, strict=True)`` with
  each kind's schema, registry and validator built once: the same schema files, the same
  draft-2020-12 validator, the same exceptions (``kubernetes_validate.ValidationError`` with the
  schema version, ``SchemaNotFoundError``) — the unit test compares the two on valid and invalid
  documents.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate import utils as kv
from referencing import Registry, Resource

_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_API_GROUP = re.compile(r"^([^./]*)(?:\.[^/]*)?/")


def iter_documents(text: str) -> Iterator[dict[str, Any]]:
    """The mapping documents of a multi-document YAML text, parsed one at a time."""
    for doc in yaml.load_all(text, Loader=_LOADER):
        if isinstance(doc, dict):
            yield doc


class SchemaValidator:
    """Strict schema validation of Kubernetes objects for one Kubernetes version, as
    ``kubernetes_validate.validate(doc, version, strict=True)`` does it, each schema loaded once."""

    def __init__(self, version: str) -> None:
        desired = version.removeprefix("v")
        if kv.major_minor(desired) > kv.latest_version():
            raise kv.VersionNotSupportedError(version=kv.major_minor(desired))
        self.desired = desired
        # the schema version: the latest one that is not newer than the desired version
        self.version = [
            v for v in kv.all_versions() if kv.major_minor(v) <= kv.major_minor(desired)
        ][-1]
        self._dir = f"v{self.version}-local-strict"
        self._registry: Registry[Any] | None = None
        self._validators: dict[tuple[str, str], jsonschema.protocols.Validator] = {}

    def _validator(self, kind: str, api_version: str) -> jsonschema.protocols.Validator:
        api = _API_GROUP.sub(r"\1-", api_version)
        key = (kind.lower(), api)
        found = self._validators.get(key)
        if found is None:
            try:
                schema = kv.schema_contents(
                    f"kubernetes-json-schema/{self._dir}/{key[0]}-{api}.json", self.desired
                )
            except FileNotFoundError:
                raise kubernetes_validate.SchemaNotFoundError(
                    version=kv.major_minor(self.desired), kind=kind, api_version=api_version
                ) from None
            if self._registry is None:
                defs = kv.schema_contents(
                    f"kubernetes-json-schema/{self._dir}/_definitions.json", self.desired
                )
                self._registry = Resource.from_contents(defs) @ Registry()
            registry = Resource.from_contents(schema) @ self._registry
            found = jsonschema.validators.Draft202012Validator(schema, registry=registry)
            self._validators[key] = found
        return found

    def validate(self, doc: dict[str, Any]) -> None:
        """Raises ``kubernetes_validate.ValidationError`` (the first error, as the library
        reports it) or ``SchemaNotFoundError`` for a kind without a bundled schema (CRDs)."""
        validator = self._validator(doc["kind"], doc["apiVersion"])
        try:
            validator.validate(doc)
        except jsonschema.ValidationError as exc:
            raise kubernetes_validate.ValidationError(
                exc, version=kv.major_minor(self.version)
            ) from None
