-- Runs after the dump, on a session of its own: unqualified names work again.
INSERT INTO product (name) VALUES ('mug');
