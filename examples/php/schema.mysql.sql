-- The application's own tables (MySQL / MariaDB).
CREATE TABLE IF NOT EXISTS orders (
    id         BIGINT AUTO_INCREMENT PRIMARY KEY,
    customer   VARCHAR(64) NOT NULL,
    total      DECIMAL(10, 2) NOT NULL,
    created_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)
) ENGINE = InnoDB;
CREATE TABLE IF NOT EXISTS outbox (
    id         BIGINT AUTO_INCREMENT PRIMARY KEY,
    event_type VARCHAR(255) NOT NULL,
    payload    LONGTEXT NOT NULL,
    status     VARCHAR(16) NOT NULL DEFAULT 'pending',
    created_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    INDEX outbox_status (status, id)
) ENGINE = InnoDB;
