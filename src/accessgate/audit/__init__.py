"""The audit record: its schema, the writer, the hash chain and sealing, pseudonyms; `tools/` reads it for auditors."""
