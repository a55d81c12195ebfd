-- The demographics table (the seed's columns), and the change log shopflow follows when it
-- reads changes by polling rather than from the binlog.
CREATE TABLE IF NOT EXISTS demographics (
    id         INT UNSIGNED     NOT NULL PRIMARY KEY,
    age        TINYINT UNSIGNED NOT NULL,
    gender     CHAR(1)          NOT NULL,
    state      VARCHAR(64)      NOT NULL,
    country    VARCHAR(64)      NOT NULL,
    updated_at TIMESTAMP(3)     NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    KEY demographics_updated_at (updated_at)
);
