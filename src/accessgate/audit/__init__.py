"""The audit record and its log.

    schema      the record, defined once: fields, order, types, events, chain, file names
    writer      AuditWriter: the proxy's queue and writer thread
    encoding    a record as one chained line (escapes, size bound)
    files       the log's files: where the chain resumes, rotations, appending
    chain       `audit verify`: the hash chain across files
    lines       a file's lines in bounded memory; readable: what the tools cannot read
    reader      AuditReader: the files as the DuckDB view `audit`
    sources     which files, and what DuckDB can read of each; cache: Parquet of rotated files
    pseudonym   keyed pseudonyms for user names
    sealing/    forward-secure MACs (not yet wired in); witness: the head kept elsewhere
    tools/      what auditors run: report, replay, output formats, progress
"""
