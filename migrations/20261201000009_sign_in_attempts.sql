-- Sign-in attempts, counted before the password is checked so concurrent
-- guesses cannot slip past the limits; a successful one is removed.
CREATE TABLE sign_in_attempts (
    id          bigserial PRIMARY KEY,
    email       text NOT NULL,
    client_addr text,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sign_in_attempts_email ON sign_in_attempts (email, at);
CREATE INDEX sign_in_attempts_addr ON sign_in_attempts (client_addr, at);
CREATE INDEX sign_in_attempts_at ON sign_in_attempts (at);
