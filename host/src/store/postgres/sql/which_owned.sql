-- Every lease of owner $3 (a graceful shutdown).
AND lease_owner = $3
