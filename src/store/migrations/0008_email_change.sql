-- Email change (issue 13): an email change's code carries the address it switches the
-- user to. NULL for every other code.
ALTER TABLE one_time_codes ADD COLUMN new_email TEXT;
