-- Reference rows every test starts with.
INSERT INTO author (id, name) VALUES (2, 'Ursula K. Le Guin');
INSERT INTO book (title, author_id) VALUES ('The Dispossessed', 2);
