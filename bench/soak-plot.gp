# gnuplot script of bench/soak.sh: one panel per series of the samples CSV, time on x.
# usage: gnuplot -e "csv='samples.csv'; out='soak.png'; title='...'; half=SECONDS; rss_kib_a=A; rss_kib_b=B;
#                    fds_a=A; fds_b=B" bench/soak-plot.gp     (the fit lines of bench/soak-judge.py: a + b * t_s)
# The dashed vertical line marks the start of the second half, the part judged for growth.
set terminal pngcairo size 1400,1050 font "DejaVu Sans,10"
set output out
set datafile separator comma
set termoption noenhanced
set key top left opaque box
set offsets 0, 0, graph 0.3, 0
set grid
set xlabel "minutes"
set arrow 1 from first half/60.0, graph 0 to first half/60.0, graph 1 nohead dt 2 lc rgb "#888888"
set multiplot layout 3,2 title title font ",13"

set title "bulkhead RSS (MiB)"
set yrange [0:*]
fitline(a, b, t) = t >= half ? a + b * t : NaN
if (!exists("rss_kib_a")) { rss_kib_a = NaN; rss_kib_b = 0 }
if (!exists("fds_a")) { fds_a = NaN; fds_b = 0 }
set samples 400
plot csv using ($1/60.0):(column("rss_kib")/1024.0) with lines lw 2 lc rgb "#1f77b4" title "RSS", \
     fitline(rss_kib_a, rss_kib_b, x * 60) / 1024.0 with lines lw 1 dt 3 lc rgb "black" title "least-squares fit, second half"

set title "bulkhead open fds (/proc/PID/fd)"
plot csv using ($1/60.0):(column("fds")) with lines lw 2 lc rgb "#d62728" title "fds", \
     fitline(fds_a, fds_b, x * 60) with lines lw 1 dt 3 lc rgb "black" title "least-squares fit, second half"

set title "client connections open (bulkhead_client_connections)"
plot csv using ($1/60.0):(column("clients")) with lines lw 2 lc rgb "#9467bd" title "clients"

set title "pooled connections and Postgres backends"
plot csv using ($1/60.0):(column("pool_http")) with lines lw 2 lc rgb "#2ca02c" title "HTTP upstream pools", \
     csv using ($1/60.0):(column("pool_pg")) with lines lw 2 lc rgb "#ff7f0e" title "Postgres pool", \
     csv using ($1/60.0):(column("pg_backends")) with points pt 7 ps 0.5 lc rgb "#8c564b" title "pg_stat_activity backends"

set title "requests answered per second (bulkhead_requests_total)"
plot csv using ($1/60.0):(column("req_rate")) with lines lw 2 lc rgb "#17becf" title "req/s"

set title "non-2xx answers per second, and reloads"
set y2range [0:*]
set y2tics
plot csv using ($1/60.0):(column("err5xx_rate")) with lines lw 2 lc rgb "#d62728" title "5xx/s", \
     csv using ($1/60.0):(column("err4xx_rate")) with lines lw 2 lc rgb "#bcbd22" title "4xx/s", \
     csv using ($1/60.0):(column("reloads")) axes x1y2 with steps lw 1 lc rgb "#7f7f7f" title "reloads done (right axis)"
unset multiplot
