<?php
// The application's side of the transactional outbox: the order and its event are written
// in ONE transaction of the application's own database. Nothing here talks to outboxd;
// outboxd relays the `outbox` table (see outboxd.toml, [[sources]]).
//
// usage: php producer.php [COUNT] [DSN] [USER] [PASSWORD]
//   COUNT  orders to place (default 1)
//   DSN    a PDO DSN (default: sqlite:app.db beside this script), e.g.
//          pgsql:host=127.0.0.1;dbname=shop   or   mysql:host=127.0.0.1;dbname=shop
declare(strict_types=1);

$count = (int) ($argv[1] ?? 1);
$dsn = $argv[2] ?? 'sqlite:' . __DIR__ . '/app.db';
$pdo = new PDO($dsn, $argv[3] ?? null, $argv[4] ?? null, [
    PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION,
]);
$driver = $pdo->getAttribute(PDO::ATTR_DRIVER_NAME);
if ($driver === 'sqlite') {
    // Wait for the relay's short transactions instead of failing with "database is locked".
    $pdo->exec('PRAGMA busy_timeout = 5000');
}
$pdo->exec(file_get_contents(__DIR__ . "/schema.$driver.sql"));

$insertOrder = $pdo->prepare('INSERT INTO orders (customer, total) VALUES (?, ?)');
$insertEvent = $pdo->prepare('INSERT INTO outbox (event_type, payload) VALUES (?, ?)');

for ($i = 0; $i < $count; $i++) {
    $customer = 'customer-' . random_int(1, 50);
    $total = sprintf('%.2f', random_int(100, 99999) / 100);

    $pdo->beginTransaction();
    $insertOrder->execute([$customer, $total]);
    $orderId = (int) $pdo->lastInsertId();
    $insertEvent->execute(['order.created', json_encode([
        'order_id' => $orderId,
        'customer' => $customer,
        'total' => $total,
        'currency' => 'EUR',
    ])]);
    $pdo->commit();
}
fwrite(STDERR, "placed $count orders\n");
