/* Whether a /sql request's statement text may leave session state on the server connection it ran
 * on, for `databases.<x>.reset: auto` (docs/configuration.md). Pure: no I/O, no allocation.
 * Unit-tested in tests/unit/test_sql_scan.c. */
#ifndef BH_SQL_SCAN_H
#define BH_SQL_SCAN_H

#include <stdbool.h>
#include <stddef.h>

/* True when running this SQL text (one statement, as sent by a /sql client; may also be several
 * ';'-separated statements) may leave session state on the server connection.
 *
 * sql: len bytes, not NUL-terminated (never read past len); NULL only when len is 0. The text is
 * read as the server will read it with client_encoding UTF8 (the pools connect with it).
 *
 * True when any statement's first keyword is not SELECT, INSERT, UPDATE, DELETE, WITH, VALUES,
 * TABLE or MERGE; when a statement names set_config, a session-level advisory lock function, a
 * sequence function or pg_settings (UPDATE pg_settings is a SET); when a SELECT/WITH/TABLE/VALUES
 * statement has an INTO keyword (SELECT ... INTO creates a table; WITH ... INSERT INTO counts
 * too); and whenever the text cannot be read for sure: an unterminated literal or comment, a NUL
 * byte, a string literal whose end depends on standard_conforming_strings. False for a text of
 * only whitespace, comments and semicolons. O(len). */
bool bh_sql_leaves_state(const char *sql, size_t len);

#endif
