#!/usr/bin/perl
# test/lint/sql_in_c.pl FILE...: checks the SQL text that crm_ext's C code
# runs through SPI for anything resolved through the caller's search_path.
#
# C functions run with the caller's search_path, so an operator, function,
# type or cast written bare in SQL text that C runs can be taken over by an
# object planted in a schema the caller searches (an exact-match
# "numeric * integer" in public beats pg_catalog's "numeric * numeric").
# Every one must be schema-qualified: operators as OPERATOR(pg_catalog.*),
# functions as pg_catalog.f(...) or crm.f(...), casts as ::pg_catalog.type.
# Constructs that look an operator up implicitly (IN, BETWEEN, LIKE, NULLIF,
# IS DISTINCT FROM, simple CASE, JOIN ... USING, NATURAL JOIN) are refused.
#
# A C string is taken as SQL when a run of adjacent literals contains a
# statement keyword; literals inside errmsg/errdetail/errhint/elog are not.
# Prints TAP: one line per file, and the offending statements on failure.
use strict;
use warnings;

my @files = @ARGV or die "usage: $0 FILE... | $0 --self-test\n";

# Words that may stand before "(" without a schema: SQL syntax, not functions.
my %syntax_paren = map { $_ => 1 } qw(
	AND OR NOT EXISTS ANY ALL SOME ARRAY VALUES COALESCE GREATEST LEAST FROM
	FILTER OVER ROW AS ON CONFLICT LATERAL WHERE SELECT JOIN BY WHEN THEN ELSE
	SET INTO RETURNING WITH ORDINALITY OPERATOR LIMIT OFFSET);
# Words that may stand before a string literal: SQL syntax, not type names.
my %syntax_literal = map { $_ => 1 } qw(
	THEN ELSE WHEN SELECT AND OR NOT VALUES BY IS AS RETURN DEFAULT SET ON
	WHERE END);
# Words that make PostgreSQL look an operator up by name.
my %implicit_operator = map { $_ => 1 } qw(
	IN BETWEEN LIKE ILIKE SIMILAR NULLIF NATURAL OVERLAPS CAST ISNULL NOTNULL);

# The C string-literal runs of a file: [line, text] for each run.
sub literal_runs
{
	my ($src) = @_;
	my @runs;
	my ($cur, $line, $gap) = (undef, 0, '');
	my $lineno = 1;
	pos($src) = 0;
	while (pos($src) < length $src)
	{
		if ($src =~ /\G"((?:[^"\\\n]|\\.)*)"/gc)
		{
			my $s = $1;
			$s =~ s/\\n/ /g;
			$s =~ s/\\t/ /g;
			$s =~ s/\\"/"/g;
			$s =~ s/\\\\/\\/g;
			if (defined $cur && $gap =~ /^(?:\s|\\\n|\/\*.*?\*\/|[A-Za-z_]\w*)*$/s)
			{
				# a macro argument between two literals stands for an alias
				my ($id) = $gap =~ /([A-Za-z_]\w*)/;
				$cur .= (defined $id ? " $id " : '') . $s;
			}
			else
			{
				push @runs, [$line, $cur, $gap] if defined $cur;
				$cur = $s;
				$line = $lineno;
			}
			$gap = '';
		}
		elsif ($src =~ /\G'(?:[^'\\]|\\.)*'/gc) { $gap .= 'x'; }
		elsif ($src =~ /\G\/\*.*?\*\//gcs) { my $c = $&; $lineno += ($c =~ tr/\n//); }
		elsif ($src =~ /\G\/\/[^\n]*/gc) { }
		elsif ($src =~ /\G(\n)/gc) { $lineno++; $gap .= "\n"; }
		elsif ($src =~ /\G([^"'\/\n]+|.)/gcs) { $gap .= $1; }
	}
	push @runs, [$line, $cur, ''] if defined $cur;
	return @runs;
}

# Text before a run decides whether it is a message rather than SQL.
sub is_sql
{
	my ($text, $before) = @_;
	return 0 if $before =~ /(?:errmsg|errdetail|errhint|errmsg_plural|errcontext|elog\s*\(\s*\w+\s*,)\s*\(?\s*$/s;
	return $text =~ /\b(?:SELECT|INSERT INTO|UPDATE|DELETE FROM|JOIN|WHERE|RETURNING)\b/;
}

sub tokens
{
	my ($sql) = @_;
	my @t;
	pos($sql) = 0;
	while (pos($sql) < length $sql)
	{
		if ($sql =~ /\G\s+/gc) { next; }
		elsif ($sql =~ /\G'(?:[^']|'')*'/gc) { push @t, ['str', $&]; }
		elsif ($sql =~ /\G"(?:[^"]|"")*"/gc) { push @t, ['id', $&]; }
		elsif ($sql =~ /\G\$\d+/gc) { push @t, ['param', $&]; }
		elsif ($sql =~ /\G%s/gc) { push @t, ['id', 'placeholder']; }	# psprintf: a table name
		elsif ($sql =~ /\G\d+(?:\.\d+)?/gc) { push @t, ['num', $&]; }
		elsif ($sql =~ /\G[A-Za-z_][A-Za-z_0-9]*/gc) { push @t, ['id', $&]; }
		elsif ($sql =~ /\G::/gc) { push @t, ['cast', '::']; }
		elsif ($sql =~ /\G[+\-*\/<>=~!@#%^&|`?]+/gc) { push @t, ['op', $&]; }
		elsif ($sql =~ /\G./gcs) { push @t, ['punct', $&]; }
	}
	return @t;
}

# The problems of one SQL text, as short strings.
sub problems
{
	my ($sql) = @_;
	my @t = tokens($sql);
	my @bad;
	my @set_depth;				# paren depths at which an UPDATE's SET list is open
	my $depth = 0;
	for my $i (0 .. $#t)
	{
		my ($kind, $v) = @{ $t[$i] };
		my $uv = uc $v;
		my $prev = $i > 0 ? $t[$i - 1] : ['', ''];
		my $next = $i < $#t ? $t[$i + 1] : ['', ''];
		my $prev2 = $i > 1 ? $t[$i - 2] : ['', ''];
		if ($v eq '(') { $depth++; next; }
		if ($v eq ')') { $depth--; pop @set_depth while @set_depth && $set_depth[-1] > $depth; next; }
		if ($kind eq 'id' && $uv eq 'SET')
		{
			push @set_depth, $depth;
			next;
		}
		if ($kind eq 'id' && @set_depth && $set_depth[-1] == $depth
			&& $uv =~ /^(?:WHERE|FROM|RETURNING)$/)
		{
			pop @set_depth;
		}
		if ($kind eq 'op')
		{
			my $qualified = $i >= 4 && uc($t[$i - 4][1]) eq 'OPERATOR' && $t[$i - 3][1] eq '('
				&& $t[$i - 2][1] =~ /^(?:pg_catalog|crm)$/ && $t[$i - 1][1] eq '.';
			next if $qualified;
			next if $v eq '=>';
			next if $v eq '*' && ($prev->[1] =~ /^(?:,|\(|\.)$/ || uc($prev->[1]) eq 'SELECT')
				&& ($next->[1] =~ /^(?:,|\))$/ || uc($next->[1]) eq 'FROM');
			next if $v eq '=' && @set_depth && $set_depth[-1] == $depth
				&& $prev->[0] eq 'id' && ($prev2->[1] eq ',' || uc($prev2->[1]) eq 'SET');
			push @bad, "operator $v";
		}
		elsif ($kind eq 'cast')
		{
			push @bad, "cast to $next->[1]"
				unless $next->[1] =~ /^(?:pg_catalog|crm)$/ && $i + 2 <= $#t && $t[$i + 2][1] eq '.';
		}
		elsif ($kind eq 'id')
		{
			if ($implicit_operator{$uv}) { push @bad, "$uv (looks an operator up)"; next; }
			if ($uv eq 'DISTINCT' && uc($prev->[1]) =~ /^(?:IS|NOT)$/) { push @bad, "IS DISTINCT FROM"; next; }
			if ($uv eq 'CASE' && uc($next->[1]) ne 'WHEN') { push @bad, "simple CASE (compares with =)"; next; }
			if ($uv eq 'USING' && $next->[1] eq '(') { push @bad, "JOIN USING"; next; }
			next if $prev->[1] eq '.';
			if ($next->[1] eq '(' && !$syntax_paren{$uv}
				&& !(uc($prev->[1]) eq 'AS' || $prev->[1] eq ')' || $prev->[0] eq 'id'
					 && !$syntax_paren{uc $prev->[1]} && !$syntax_literal{uc $prev->[1]}))
			{
				push @bad, "function $v() without schema";
			}
			elsif ($next->[0] eq 'str' && !$syntax_literal{$uv})
			{
				push @bad, "typed literal $v '...'";
			}
		}
	}
	return @bad;
}

my $n = 0;
my $failed = 0;

# --self-test: the checker must catch each construct and pass clean SQL.
if ($files[0] eq '--self-test')
{
	my @bad = (
		'SELECT (a.amount * 100) FROM crm.orders a',
		'SELECT a.x FROM crm.t a WHERE a.x = 1',
		'SELECT a.x::bigint FROM crm.t a',
		'SELECT a.x FROM crm.t a WHERE a.y IN (1, 2)',
		'SELECT a.x FROM crm.t a WHERE a.y BETWEEN 1 AND 2',
		'SELECT a.x FROM crm.t a WHERE a.s LIKE $1',
		'SELECT NULLIF(a.x, 0) FROM crm.t a',
		'SELECT a.x FROM crm.t a WHERE a.x IS DISTINCT FROM $1',
		'SELECT CASE a.k WHEN 1 THEN 2 END FROM crm.t a',
		'SELECT a.x FROM crm.t a JOIN crm.u b USING (x)',
		'SELECT sum(a.x) FROM crm.t a',
		"SELECT a.x FROM crm.t a WHERE a.at OPERATOR(pg_catalog.>) timestamptz '2020-01-01'",
		'SELECT CAST(a.x AS int8) FROM crm.t a',
		'SELECT - a.x FROM crm.t a',
		'UPDATE crm.t a SET x = 1 WHERE a.y = 2',
		'SELECT a.x FROM crm.t a WHERE a.x OPERATOR(public.=) 1',
	);
	my @good = (
		'SELECT (a.amount OPERATOR(pg_catalog.*) 100)::pg_catalog.int8 FROM crm.orders a',
		'UPDATE crm.t a SET x = 1, y = pg_catalog.now() WHERE a.y OPERATOR(pg_catalog.=) ANY ($1)',
		'INSERT INTO crm.t (x) SELECT u.x FROM ROWS FROM (pg_catalog.unnest($1)) AS u(x) ON CONFLICT (x) DO UPDATE SET x = excluded.x',
		'SELECT pg_catalog.count(*), coalesce(a.x, 0) FROM crm.t a ORDER BY 1 LIMIT 1',
		"SELECT CASE WHEN a.x OPERATOR(pg_catalog.<) 1 THEN 'a' ELSE 'b' END FROM crm.t a",
	);
	for my $sql (@bad)
	{
		$n++;
		my @p = problems($sql);
		print((@p ? 'ok' : 'not ok'), " $n - flags: $sql\n");
		$failed++ unless @p;
	}
	for my $sql (@good)
	{
		$n++;
		my @p = problems($sql);
		print((@p ? 'not ok' : 'ok'), " $n - passes: $sql\n", map { "#   $_\n" } @p);
		$failed++ if @p;
	}
	print "1..$n\n";
	exit($failed ? 1 : 0);
}

for my $file (@files)
{
	open my $fh, '<', $file or die "$file: $!\n";
	my $src = do { local $/; <$fh> };
	close $fh;
	my @report;
	my $checked = 0;
	my @lines = split /\n/, $src;
	for my $run (literal_runs($src))
	{
		my ($line, $text, undef) = @$run;
		next unless defined $text;
		# What precedes the run decides message vs SQL: its own line up to
		# the literal, or the line before when the literal starts a line.
		my $before = $lines[$line - 1];
		$before =~ s/".*\z//s;
		$before = $lines[$line - 2] . $before if $before =~ /^\s*$/ && $line > 1;
		next unless is_sql($text, $before);
		$checked++;
		my @bad = problems($text);
		push @report, "#   $file:$line: " . join('; ', @bad) . "\n#     $text\n" if @bad;
	}
	$n++;
	if (@report)
	{
		$failed++;
		print "not ok $n - SQL text in $file is schema-qualified ($checked statements)\n", @report;
	}
	else
	{
		print "ok $n - SQL text in $file is schema-qualified ($checked statements)\n";
	}
}
print "1..$n\n";
exit($failed ? 1 : 0);
