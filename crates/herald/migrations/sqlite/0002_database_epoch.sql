-- Facts about the database itself. `epoch`: the epoch every stream created
-- from now on starts with. Streams here are never forgotten, so they can
-- share it; a stream that does not exist yet is reported in it without a
-- row being made (a read makes no state), and the first publication
-- creates the stream in that same epoch.
CREATE TABLE herald_meta (
    key   TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
