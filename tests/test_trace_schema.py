"""The trace schema in docs/ matches the code, and every record of a real run parses against it."""
from pathlib import Path

from apfdbg.cli import main
from apfdbg.events import json_schema, markdown_table, parse_line

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_schema_file_is_current():
    assert (DOCS / "trace-schema.json").read_text() == json_schema() + "\n", \
        "regenerate: python -c 'from apfdbg.events import json_schema; print(json_schema())' > docs/trace-schema.json"


def test_trace_doc_lists_every_kind():
    assert markdown_table() in (DOCS / "trace.md").read_text()


def test_every_record_of_a_run_parses(guest, tmp_path):
    t = tmp_path / "t.jsonl"
    sc = tmp_path / "s.toml"
    sc.write_text('[[actions]]\nat = 100\ndo = "page_out"\ngfns = "0x100-0x102"\n')
    main(["run", str(guest("machine/hello")), "--scenario", str(sc), "--headless", "--trace", str(t)])
    kinds = set()
    for line in t.read_text().splitlines():
        e = parse_line(line)
        kinds.add(e.kind)
        assert e.model_dump_json() == line
    assert {"page_out", "swapped_fault", "sync_fault", "page_in", "exit"} <= kinds


def test_every_record_of_a_kvm_run_parses(tmp_path):
    """A real run under pressure (machine and KVM events) produces only schema-valid records,
    identical after a round trip."""
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    t = tmp_path / "t.jsonl"
    sc = tmp_path / "s.toml"
    sc.write_text((root / "apfdbg" / "scenarios" / "pressure.toml").read_text()
                  .replace('image = "../data/guests', f'image = "{root}/guests')
                  .replace("max_insns = 60_000_000", "max_insns = 3_000_000"))
    main(["run", "--scenario", str(sc), "--headless", "--trace", str(t)])
    kinds = set()
    for line in t.read_text().splitlines():
        e = parse_line(line)
        kinds.add(e.kind)
        assert e.model_dump_json() == line
    assert {"async_pf_not_present", "async_pf_ready", "async_pf_completed", "try_async_get_page",
            "msr_write", "wakeup_all"} <= kinds
