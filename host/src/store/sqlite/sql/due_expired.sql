-- A claim's take-over: in flight, their lease expired (the attempt never reported back).
d.status = 'in_flight' AND d.lease_expires_at <= ?4
