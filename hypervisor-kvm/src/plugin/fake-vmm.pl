#!/usr/bin/perl
# fake-vmm: a test double of hypervisor-kvm's `vmm` for the kvm plugin's tests; no VM at all.
# It takes the flags the plugin passes, daemonizes like the vmm (the parent exits 0 once the
# API socket is bound and the pid file written, or 1 printing the child's error), and answers
# the JSON-lines control API (state, start, pause, resume, shutdown).
# Words in --cmdline steer it: fake.fail (exit 1 with an error before daemonizing),
# fake.noapi (daemonize without an API socket), fake.deaf (answer shutdown but do not exit).
use strict;
use warnings;
use IO::Handle;
use IO::Socket::UNIX;
use POSIX qw(setsid _exit);
use Socket qw(SOCK_STREAM);

my (%arg, $paused, $daemonize);
while (@ARGV) {
    my $a = shift @ARGV;
    if ($a eq '--paused') { $paused = 1 }
    elsif ($a eq '--daemonize') { $daemonize = 1 }
    elsif ($a =~ /^--(.+)$/) { $arg{$1} = shift @ARGV }
    else { print STDERR "fake-vmm: unexpected argument $a\n"; exit 2 }
}
my $cmdline = $arg{cmdline} // '';
for my $required (qw(kernel console-log api-socket pid-file)) {
    defined $arg{$required} or do { print STDERR "fake-vmm: --$required is required\n"; exit 2 };
}
if ($cmdline =~ /\bfake\.fail\b/) {
    print STDERR "vmm: loading the guest: the kernel has no PVH entry note\n";
    exit 1;
}
$daemonize or do { print STDERR "fake-vmm: only --daemonize is faked\n"; exit 2 };

pipe(my $r, my $w) or die "pipe: $!";
my $child = fork() // die "fork: $!";
if ($child) {
    close $w;
    my $said = do { local $/; <$r> } // '';
    exit 0 if $said eq "ready\n";
    print STDERR ($said eq '' ? "vmm: the daemonized vmm exited before it was ready\n" : $said);
    exit 1;
}
close $r;
$w->autoflush(1);
setsid();
open STDIN, '<', '/dev/null';
my $api = $arg{'api-socket'};
my $listener;
unless ($cmdline =~ /\bfake\.noapi\b/) {
    unlink $api;
    $listener = IO::Socket::UNIX->new(Type => SOCK_STREAM, Local => $api, Listen => 5)
        or do { print $w "vmm: binding the API socket $api: $!\n"; _exit(1) };
}
open my $pf, '>', $arg{'pid-file'} or do { print $w "vmm: writing the pid file: $!\n"; _exit(1) };
print $pf "$$\n";
close $pf;
print $w "ready\n";
close $w;
if (!$listener) { sleep 1 while 1 }

my $state = $paused ? 'created' : 'running';
my %from = (start => 'created', pause => 'running', resume => 'paused');
my %to = (start => 'running', pause => 'paused', resume => 'running');
while (my $conn = $listener->accept) {
    while (my $line = <$conn>) {
        my ($op) = $line =~ /"op"\s*:\s*"(\w+)"/;
        $op //= '';
        if ($op eq 'state') {
            print $conn qq({"ok":true,"state":"$state","pid":$$}\n);
        } elsif ($op eq 'shutdown') {
            print $conn qq({"ok":true,"state":"stopping"}\n);
            next if $cmdline =~ /\bfake\.deaf\b/;
            unlink $api, $arg{'pid-file'};
            _exit(0);
        } elsif (exists $from{$op}) {
            if ($state eq $from{$op}) {
                $state = $to{$op};
                print $conn qq({"ok":true,"state":"$state"}\n);
            } else {
                print $conn qq({"ok":false,"error":"cannot $op: the VM is $state"}\n);
            }
        } else {
            print $conn qq({"ok":false,"error":"unknown op"}\n);
        }
    }
    close $conn;
}
